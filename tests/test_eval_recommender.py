"""Ranking metrics (exact), static evaluation and interactive evaluation with a scripted ranker and simulator."""

import math

import pytest

from smtpo_fast.eval import interactive_eval, ndcg_at, recall_at, static_eval, summarise_static
from smtpo_fast.eval.recommender import PopularityRanker, write_predictions
from smtpo_fast.simulator import Feedback


def test_recall_and_ndcg_exact():
    ranked = ["a", "b", "c", "d"]
    assert recall_at(ranked, ["c", "z"], 3) == [1.0, 0.0]
    assert recall_at(ranked, ["d"], 3) == [0.0]
    assert ndcg_at(ranked, ["a", "c"], 10) == [1.0, pytest.approx(1 / math.log2(4))]
    rows = [{"target_ids": ["a"], "ranked_ids": ranked}, {"target_ids": ["c", "z"], "ranked_ids": ranked}]
    s = summarise_static(rows, ks=(1, 10))
    assert s["recall@1"] == pytest.approx(1 / 3) and s["recall@10"] == pytest.approx(2 / 3)
    assert s["ndcg@10"] == pytest.approx((1 + 0.5 + 0) / 3) and s["pairs"] == 3 and s["turns"] == 2


def _turn(i, target, context_items=()):
    return {"dialogue_id": str(i), "turn_index": 3, "context": [{"role": "seeker", "text": f"hello {i}"}],
            "context_item_ids": list(context_items), "feedback": "", "eval_targets": [target],
            "new_target_ids": [target], "all_target_ids": [target]}


def test_static_eval_popularity_excludes_mentioned():
    ranker = PopularityRanker({"a": 5, "b": 4, "c": 3})
    turns = [_turn(0, "b", ["a"]), _turn(1, "c")]
    metrics, rows = static_eval(ranker, turns, ks=(1, 10))
    assert rows[0]["ranked_ids"] == ["b", "c"] and rows[1]["ranked_ids"] == ["a", "b", "c"]
    assert metrics["recall@1"] == 0.5 and metrics["recall@10"] == 1.0


class ScriptedRanker:
    """Ranks the target first once the seeker's latest words mention 'clue'."""

    name = "scripted"

    def rank(self, queries, k=50):
        out = []
        for q in queries:
            target = q["context"][0]["text"].split()[-1]
            hit = "clue" in q["feedback"]
            out.append(([target, "x", "y"] if hit else ["x", target, "y"])[:k])
        return out


class CluingSimulator:
    def __init__(self):
        self.targets_seen = []

    def respond_batch(self, dialogues, recommended_lists, target_lists=None):
        self.targets_seen += target_lists
        return [Feedback("here is a clue", False) for _ in dialogues]


def test_interactive_eval_success_by_turn(tmp_path):
    turns = [dict(_turn(0, "t0"), context=[{"role": "seeker", "text": "I want t0"}]),
             dict(_turn(1, "t1"), context=[{"role": "seeker", "text": "I want t1"}], feedback="a clue already")]
    simulator = CluingSimulator()
    metrics, rows = interactive_eval(ScriptedRanker(), simulator, turns, max_turns=3, ks=(1, 10))
    assert metrics["success@1"] == 0.5 and metrics["success@2"] == 1.0 and metrics["success"] == 1.0
    assert metrics["recall@1@1"] == 0.5 and metrics["recall@10@1"] == 1.0 and metrics["recall@1@2"] == 1.0
    assert simulator.targets_seen == [["t0"]]  # the target-aware simulator is told the target
    assert rows[0]["success_turn"] == 2 and rows[0]["simulator_replies"] == ["here is a clue"]
    assert rows[0]["turn_lists"][0][:2] == ["x", "t0"] and rows[1]["success_turn"] == 1
    write_predictions(tmp_path / "p.jsonl", rows, method="scripted")
    import json
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert lines[0]["method"] == "scripted" and lines[0]["target_ids"] == ["t0"] and len(lines) == 2
