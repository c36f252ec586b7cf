"""`smtpo data stats|download|synth`."""

from __future__ import annotations

import json
from pathlib import Path


def _stats(args) -> int:
    from .paths import data_dir
    from .stats import dataset_stats, format_stats

    root = Path(args.data_dir) if args.data_dir else data_dir()
    report = dataset_stats(root, skip_bad=args.skip_bad)
    print(json.dumps(report, indent=1) if args.json else format_stats(report))
    return 0


def _download(args) -> int:
    from .download import download

    for path in download(args.dataset, args.out):
        print(path)
    return 0


def _synth(args) -> int:
    from ..cli import config_from_args
    from .synth import SynthConfig, generate

    counts = generate(args.out, config_from_args(SynthConfig, args))
    print(f"wrote {counts} to {Path(args.out) / 'redial'}; use it with SMTPO_DATA_DIR={args.out}")
    return 0


def add_commands(groups) -> None:
    from ..cli import add_config_arguments
    from .synth import SynthConfig

    data = groups["data"]
    p = data.add_parser("stats", help="counts, recommendation turns and metadata match rates of a data folder",
                        description="Reads every ReDial JSONL and INSPIRED TSV file of a data folder and reports "
                                    "dialogues, recommendation turns and how much of the catalog has metadata.")
    p.add_argument("--data-dir", default=None,
                   help="data folder with redial/ and inspired/ (default: $SMTPO_DATA_DIR or ../shared/data)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed lines (counted and reported) instead of stopping at the first")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_stats)

    p = data.add_parser("download", help="fetch an official dataset archive (needs network)",
                        description="Downloads the official ReDial or INSPIRED files into OUT/<dataset>/.")
    p.add_argument("dataset", choices=["redial", "inspired"], help="which dataset to fetch")
    p.add_argument("--out", default="data", help="folder to write OUT/<dataset>/ into (default: data)")
    p.set_defaults(handler=_download)

    p = data.add_parser("synth", help="write an offline synthetic ReDial-format dataset with its own catalog",
                        description="Generates invented movies (genres, directors, stars, years, plots) and "
                                    "dialogues whose stated preferences determine the target, in ReDial's format, "
                                    "under OUT/redial/. Deterministic given --seed.")
    p.add_argument("--out", required=True, help="output folder (then set SMTPO_DATA_DIR to it)")
    add_config_arguments(p, SynthConfig)
    p.set_defaults(handler=_synth)
