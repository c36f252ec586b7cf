"""`smtpo data download`: fetch the official archives for users (never run in tests)."""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from pathlib import Path

SOURCES = {
    "redial": {
        "files": {"redial_dataset.zip": "https://github.com/ReDialData/website/raw/data/redial_dataset.zip"},
        "unzip": True,
        "note": "official ReDial release (CC BY 4.0): train_data.jsonl, test_data.jsonl, movies_with_mentions.csv",
    },
    "inspired": {
        "files": {f"{split}.tsv": f"https://raw.githubusercontent.com/sweetpeach/Inspired/master/data/dialog_data/{split}.tsv"
                  for split in ("train", "dev", "test")},
        "unzip": False,
        "note": "official INSPIRED dialogue splits (train, dev, test)",
    },
}


def download(name: str, out_dir: str | Path, progress: bool = True) -> list[Path]:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(SOURCES)}")
    target = Path(out_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, url in SOURCES[name]["files"].items():
        path = target / filename
        if progress:
            print(f"fetching {url}")
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
        if SOURCES[name]["unzip"] and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith("/"):
                        continue
                    dest = target / Path(member).name
                    with archive.open(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    written.append(dest)
        else:
            written.append(path)
    return written
