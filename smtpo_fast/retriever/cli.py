"""`smtpo train retriever` and `smtpo eval retriever`."""

from __future__ import annotations

import json
import time
from pathlib import Path


def _catalog(args):
    from ..data.catalog import load_catalog

    return load_catalog(args.data_dir)


def _turns(path, catalog, args):
    from ..data.errors import SkipCounter
    from ..data.turns import TurnConfig, iter_turns

    skipped = SkipCounter()
    config = TurnConfig(merge_consecutive=args.merge_consecutive, skip_bad=args.skip_bad)
    turns = list(iter_turns(path, catalog, config, skipped))
    if skipped.count:
        print(f"{path}: {skipped.report()}")
    return turns


def _default_file(args, name: str) -> Path:
    from ..data.paths import data_dir

    root = Path(args.data_dir) if args.data_dir else data_dir()
    return root / "redial" / name


def _train(args, catalog):
    from ..cli import config_from_args
    from .retriever import DualViewRetriever, RetrieverConfig

    train_file = Path(args.train) if args.train else _default_file(args, "train_sample.jsonl")
    turns = _turns(train_file, catalog, args)
    retriever = DualViewRetriever(catalog, config_from_args(RetrieverConfig, args))
    start = time.time()
    retriever.fit(turns, progress=not args.quiet)
    print(f"trained on {train_file} ({len(turns)} turns) in {time.time() - start:.0f}s")
    return retriever


def _train_command(args) -> int:
    catalog = _catalog(args)
    retriever = _train(args, catalog)
    retriever.save(args.out)
    print(f"saved to {args.out}")
    return 0


def _eval_command(args) -> int:
    from .evaluate import METHODS, evaluate_retriever, evaluation_turns, results_table
    from .retriever import DualViewRetriever

    catalog = _catalog(args)
    if args.model:
        retriever = DualViewRetriever.load(args.model, catalog)
    else:
        retriever = _train(args, catalog)
        if args.save:
            retriever.save(args.save)
    test_file = Path(args.data) if args.data else _default_file(args, "test_public.jsonl")
    turns = evaluation_turns(_turns(test_file, catalog, args), new_only=not args.all_targets,
                             require_context=not args.include_empty_context)
    methods = [m for m in METHODS if m in args.methods.split(",")] if args.methods else METHODS
    results = evaluate_retriever(retriever, turns, ks=(10, 50, 100), methods=methods,
                                 predictions_out=args.predictions_out, progress=not args.quiet)
    n_pairs = sum(len(t["eval_targets"]) for t in turns)
    which = "all mentioned items" if args.all_targets else "items new to the dialogue"
    caption = (f"Candidate recall on {test_file.name}: {len(turns)} recommendation turns "
               f"({'including' if args.include_empty_context else 'with a non-empty context, excluding'} empty "
               f"contexts), {n_pairs} (turn, target) pairs, targets = {which}; items already mentioned are never "
               f"candidates; encoder {retriever.encoder.name}.")
    table = results_table(results, caption=caption)
    print(table)
    if args.table_out:
        Path(args.table_out).write_text(table + "\n", encoding="utf-8")
    if args.results_json:
        Path(args.results_json).write_text(json.dumps({m: {str(k): v for k, v in r.items()}
                                                       for m, r in results.items()}, indent=1))
    return 0


def _common(p) -> None:
    p.add_argument("--data-dir", default=None,
                   help="data folder holding redial/ (catalog, default train/test files); default "
                        "$SMTPO_DATA_DIR or ../shared/data")
    p.add_argument("--train", default=None,
                   help="training dialogues, ReDial JSONL or INSPIRED TSV (default: <data-dir>/redial/train_sample.jsonl)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--merge-consecutive", action=__import__("argparse").BooleanOptionalAction, default=False,
                   help="join consecutive messages of one speaker into one utterance before cutting turns "
                        "(default: off, one turn per recommender message, the ReDial evaluation convention)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_commands(groups) -> None:
    from ..cli import add_config_arguments
    from .retriever import RetrieverConfig

    p = groups["train"].add_parser("retriever", help="train the dual-view retriever and save it",
                                   description="Fits the collaborative view and the fusion module on the "
                                               "recommendation turns of a training file and saves the retriever.")
    _common(p)
    p.add_argument("--out", required=True, help="folder to save the trained retriever to")
    add_config_arguments(p, RetrieverConfig)
    p.set_defaults(handler=_train_command)

    p = groups["eval"].add_parser("retriever", help="candidate Recall@10/50/100 of the retriever and baselines",
                                  description="Evaluates popularity, BM25, each view alone, their untrained "
                                              "z-score sum and the fused retriever on the recommendation turns of a "
                                              "test file (either official format), printing a markdown table.")
    _common(p)
    p.add_argument("--data", default=None,
                   help="test dialogues, ReDial JSONL or INSPIRED TSV (default: <data-dir>/redial/test_public.jsonl)")
    p.add_argument("--model", default=None, help="a saved retriever folder; without it one is trained on --train")
    p.add_argument("--save", default=None, help="save the retriever trained here to this folder")
    p.add_argument("--predictions-out", default=None,
                   help="write the fused ranking (top 100 ids and scores) per evaluated turn as JSON lines")
    p.add_argument("--table-out", default=None, help="also write the markdown table to this file")
    p.add_argument("--results-json", default=None, help="also write the recalls as JSON to this file")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of popularity,bm25,semantic,collaborative,zsum,fused (default: all)")
    p.add_argument("--all-targets", action="store_true",
                   help="targets are all items the recommender mentions, not only new ones")
    p.add_argument("--include-empty-context", action="store_true",
                   help="also evaluate turns whose context is empty")
    add_config_arguments(p, RetrieverConfig)
    p.set_defaults(handler=_eval_command)
