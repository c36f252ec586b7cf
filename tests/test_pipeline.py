"""`smtpo run` end to end on the smallest config: every stage, the report, and a second run that is all cached."""

import json
from pathlib import Path

import pytest

from _tiny_model import single_thread
from smtpo_fast.cli import main
from smtpo_fast.pipeline import load_config

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pipeline_test.yaml"


def test_config_errors_name_the_setting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: {stepz: 3}\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(bad)
    bad.write_text("ablations: [nonsense]\n")
    with pytest.raises(ValueError, match="nonsense"):
        load_config(bad)
    assert load_config(CONFIG).rl.steps == 2


def test_smtpo_run_end_to_end_and_cached(tmp_path, capsys):
    args = ["run", "--config", str(CONFIG), "--runs-dir", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    run = tmp_path / "test"
    report = (run / "report.md").read_text()
    for label in ("Popularity", "Retriever only", "Prompted base model", "SFT only", "SFT + RL"):
        assert f"| {label} |" in report
    assert (run / "report_plots" / "rl_curves.png").exists()
    assert (run / "eval" / "predictions_interactive_rl.jsonl").read_text().count("\n") == 4
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count(": cached") == 7 and ": running" not in out
    # --only: the named RL stage (cached here) and its prerequisites, no evaluation or report
    assert main(args + ["--only", "rl"]) == 0
    out = capsys.readouterr().out
    assert "rl: cached" in out and "] eval" not in out and ": running" not in out
    with pytest.raises(SystemExit, match="rl_nonsense"):
        main(args + ["--only", "rl_nonsense"])
    # `smtpo eval recommender` on the run's models, any test file, with predictions written.
    predictions = tmp_path / "preds.jsonl"
    test_file = run / "data" / "synthetic" / "redial" / "test_public.jsonl"
    assert main(["eval", "recommender", "--run", str(run), "--data", str(test_file), "--max-turns", "3",
                 "--interactive-turns", "2", "--max-interactive", "2", "--predictions-out", str(predictions)]) == 0
    rows = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["static"] * 3 + ["interactive"] * 2
    assert all(len(r["ranked_ids"]) >= 1 and r["target_ids"] for r in rows)
    assert "turn_lists" in rows[-1] and "simulator_replies" in rows[-1]
    metrics = tmp_path / "popularity.json"
    assert main(["eval", "recommender", "--run", str(run), "--model", "popularity", "--max-turns", "3",
                 "--interactive-turns", "0", "--json-out", str(metrics)]) == 0
    saved = json.loads(metrics.read_text())
    assert saved["model"] == "popularity" and saved["static"]["turns"] == 3 and "interactive" not in saved
