"""Atomic training checkpoints in safetensors: weights (or the peft adapter), optimizer, scheduler, RNG states
and the trainer's position. A checkpoint is written into a temporary folder, flushed, then renamed into place,
and `latest` is replaced atomically after it, so a kill at any moment leaves the previous checkpoint usable."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _model_state(model) -> dict[str, torch.Tensor]:
    if is_peft(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    # Tied weights share storage; safetensors refuses shared tensors, so keep the first name of each storage.
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def _load_model_state(model, tensors: dict[str, torch.Tensor]) -> None:
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, tensors)
        return
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not (model.config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _optimizer_parts(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng() -> dict:
    """Every RNG the loop draws from (torch CPU and CUDA, Python, NumPy)."""
    import numpy as np

    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:])}


def restore_rng(rng: dict) -> None:
    import numpy as np

    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, default=float))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, step: int, model, optimizer, scheduler, rng: dict, trainer_state: dict,
                    keep: int = 2) -> Path:
    """Write `root/step-XXXXXXX` atomically, point `root/latest` at it, and keep the newest `keep` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_model_state(model), tmp / ("adapter.safetensors" if is_peft(model) else "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    _write_json(tmp / "optimizer.json", opt_meta)
    _write_json(tmp / "scheduler.json", scheduler.state_dict())
    rng_tensors = {"torch": rng["torch"], "numpy_keys": rng["numpy"][1]}
    rng_tensors.update({f"cuda.{i}": s for i, s in enumerate(rng["cuda"])})
    save_file(rng_tensors, tmp / "rng.safetensors")
    version, internal, gauss = rng["python"]
    _write_json(tmp / "rng.json", {"python": [version, list(internal), gauss], "numpy": [
        rng["numpy"][0], *rng["numpy"][2:]], "cuda_devices": len(rng["cuda"])})
    _write_json(tmp / "trainer_state.json", trainer_state)
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / LATEST)
    _fsync_dir(root)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / "trainer_state.json").exists() else None


def load_checkpoint(folder: str | Path, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore weights, optimizer and scheduler in place; returns (trainer_state, rng) for the caller to apply."""
    folder = Path(folder)
    weights = folder / ("adapter.safetensors" if is_peft(model) else "model.safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: missing (a {'peft' if is_peft(model) else 'full'} model expects it)")
    device = next(model.parameters()).device
    _load_model_state(model, {k: v.to(device) for k, v in load_file(weights).items()})
    opt_meta = json.loads((folder / "optimizer.json").read_text())
    _load_optimizer(optimizer, load_file(folder / "optimizer.safetensors"), opt_meta)
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    rng_tensors = load_file(folder / "rng.safetensors")
    rng_meta = json.loads((folder / "rng.json").read_text())
    name, pos, has_gauss, cached = rng_meta["numpy"]
    rng = {"torch": rng_tensors["torch"],
           "cuda": [rng_tensors[f"cuda.{i}"] for i in range(rng_meta["cuda_devices"])],
           "python": tuple(rng_meta["python"]),
           "numpy": (name, rng_tensors["numpy_keys"], pos, has_gauss, cached)}
    return json.loads((folder / "trainer_state.json").read_text()), rng
