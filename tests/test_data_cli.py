"""The `smtpo` command: data synth, data stats, eval retriever end to end offline; every option has help."""

import argparse
import json

import pytest

from smtpo_fast.cli import build_parser, main
from tests._data_fixtures import write_data_dir


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_is_explained(capsys):
    commands = dict(_subparsers(build_parser()))
    assert {"data stats", "data download", "data synth", "eval retriever", "train retriever"} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, f"smtpo {name} {action.option_strings[0]}"
    with pytest.raises(SystemExit) as info:
        main(["eval", "retriever", "--help"])
    assert info.value.code == 0
    assert "--predictions-out" in capsys.readouterr().out


def test_synth_then_eval_retriever_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SMTPO_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n-movies", "80", "--n-dialogues", "200", "--seed", "1"]) == 0
    monkeypatch.setenv("SMTPO_DATA_DIR", str(out))
    predictions = tmp_path / "pred.jsonl"
    table = tmp_path / "table.md"
    assert main(["eval", "retriever", "--encoder", "hashing", "--epochs", "2", "--folds", "2", "--quiet",
                 "--predictions-out", str(predictions), "--table-out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "| Fused (cross-attention, trained) |" in printed and table.read_text().strip() in printed
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert rows and all(r["method"] == "fused" for r in rows)
    # 80 movies: every finite-scored one is listed, best first, and none the context already mentioned.
    assert all(70 <= len(r["candidates"]) <= 80 and r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    assert "40 (turn, target) pairs" not in printed  # sanity: the caption counts what it evaluated
    n_pairs = sum(len(r["targets"]) for r in rows)
    assert f"{n_pairs} (turn, target) pairs" in printed


def test_stats_and_eval_on_inspired_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SMTPO_CACHE_DIR", str(tmp_path / "cache"))
    root = write_data_dir(tmp_path / "data")
    assert main(["data", "stats", "--data-dir", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metadata_match"]["any_item_rate"] == 1.0
    assert report["files"]["inspired/dev.tsv"]["recommendation_turns"] == 2
    assert report["files"]["redial/test_public.jsonl"]["new_target_pairs"] == 2
    # Train and test on the handmade files (tiny, but exercises the INSPIRED path of `--data`).
    code = main(["eval", "retriever", "--data-dir", str(root), "--train", str(root / "redial" / "test_public.jsonl"),
                 "--data", str(root / "inspired" / "dev.tsv"), "--encoder", "hashing", "--epochs", "1", "--folds", "1",
                 "--quiet", "--methods", "popularity,fused"])
    assert code == 0
    assert "3 (turn, target) pairs" in capsys.readouterr().out


def test_bad_line_fails_with_location_unless_skipped(tmp_path, capsys):
    root = write_data_dir(tmp_path / "data")
    path = root / "redial" / "test_public.jsonl"
    path.write_text(path.read_text() + "{broken\n")
    from smtpo_fast.data.errors import DataFormatError

    with pytest.raises(DataFormatError, match=r"test_public\.jsonl:2: invalid JSON"):
        main(["data", "stats", "--data-dir", str(root)])
    assert main(["data", "stats", "--data-dir", str(root), "--skip-bad"]) == 0
    assert "skipped_lines: 1" in capsys.readouterr().out
