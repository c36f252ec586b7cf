"""Where the package finds its data and where it caches what it derives from it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# smtpo_fast/data/paths.py -> the repository root is three levels up.
REPO_ROOT = Path(__file__).resolve().parents[2]


class DataDirNotFound(FileNotFoundError):
    pass


def data_dir(required: bool = True) -> Path | None:
    """The shared data folder: `$SMTPO_DATA_DIR`, else the first existing of `<repo>/../shared/data` and
    `./../shared/data`. Raises `DataDirNotFound` (or returns None when `required=False`) if none exists."""
    env = os.environ.get("SMTPO_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        if required:
            raise DataDirNotFound(f"SMTPO_DATA_DIR={env!r} is not a directory")
        return None
    candidates = [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    if required:
        raise DataDirNotFound(
            "no data folder found: set SMTPO_DATA_DIR, or put the data at one of "
            + ", ".join(str(p) for p in candidates)
            + " (`smtpo data download redial|inspired` fetches the official archives, "
            "`smtpo data synth` writes an offline synthetic dataset)"
        )
    return None


def redial_dir(root: Path | None = None) -> Path:
    return (root or data_dir()) / "redial"


def inspired_dir(root: Path | None = None) -> Path:
    return (root or data_dir()) / "inspired"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Cache root for derived artefacts (turn datasets, embeddings): `override`, else `$SMTPO_CACHE_DIR`,
    else `~/.cache/smtpo_fast`."""
    path = Path(override or os.environ.get("SMTPO_CACHE_DIR") or Path.home() / ".cache" / "smtpo_fast")
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex); the cache keys of everything derived from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def combined_hash(paths, *extra: object) -> str:
    """One key for several input files (None entries skipped) plus any options that change the output."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        digest.update(file_hash(path).encode())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()[:24]
