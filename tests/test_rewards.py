"""Rewards and the answer parser on handmade answers: exact values, malformed generations."""

import math

import pytest

from smtpo_fast.recommender import (RewardConfig, format_reward, parse_answer, preference_reward,
                                    recommendation_reward, score_answer)

CANDS = [f"id{k}" for k in range(1, 21)]  # number k is CANDS[k - 1]


def test_parse_well_formed():
    text = ("Preferences: comedy\nMatches: [3] comedy\nRanking: [3] fits.\n"
            "Top-10: 3, 1, 2, 4, 5, 6, 7, 8, 9, 10")
    p = parse_answer(text, CANDS)
    assert p.found and p.ranked == [3, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert p.ranked_ids[:2] == ["id3", "id1"] and p.invalid == 0 and p.repeats == 0
    assert format_reward(p, 20) == 1.0


@pytest.mark.parametrize("text", ["", "no list here", "Top-10:", "Top-10: none of them", None, "Top-10 ::: ,,,",
                                  "\x00\xff garbage [[[", "Top-10"])
def test_parse_malformed_gives_not_found(text):
    p = parse_answer(text, CANDS)
    assert not p.found and p.ranked == [] and p.ranked_ids == []
    assert format_reward(p, 20) == 0.0


def test_parse_repeats_out_of_range_brackets_and_last_line_wins():
    text = "Top-10: 1, 2\nthinking again\ntop 10 = [5] [5] 99, 0, 7 and then some words 8, 9"
    p = parse_answer(text, CANDS)
    assert p.numbers == [5, 5, 99, 0, 7] and p.ranked == [5, 7]
    assert p.invalid == 2 and p.repeats == 1
    # valid 3/5, unique 4/5, full 2/10, within cap 1 -> mean
    assert format_reward(p, 20) == pytest.approx((3 / 5 + 4 / 5 + 2 / 10 + 1) / 4)


def test_format_length_cap_and_few_candidates():
    p = parse_answer("x" * 50 + "\nTop-10: 2, 1", CANDS[:3])
    cfg = RewardConfig(max_chars=40)
    # 3 candidates: a full list is 3 long; 2 listed -> 2/3; over the cap -> 0
    assert format_reward(p, 3, cfg) == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)


def test_recommendation_rr_and_ndcg_exact():
    ranked = ["a", "b", "c", "d"]
    assert recommendation_reward(ranked, ["c"]) == pytest.approx(1 / 3)
    assert recommendation_reward(ranked, ["z"]) == 0.0
    assert recommendation_reward(ranked, ["a"], RewardConfig(rank_metric="ndcg")) == 1.0
    assert recommendation_reward(ranked, ["c"], RewardConfig(rank_metric="ndcg")) == pytest.approx(1 / math.log2(4))
    # two targets at ranks 2 and 4: DCG / IDCG(ranks 1, 2)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert recommendation_reward(ranked, ["b", "d"], RewardConfig(rank_metric="ndcg")) == pytest.approx(expected)
    # outside the top-n counts nothing
    assert recommendation_reward(ranked, ["d"], RewardConfig(top_n=3)) == 0.0
    with pytest.raises(ValueError, match="rank_metric"):
        recommendation_reward(ranked, ["a"], RewardConfig(rank_metric="map"))


def test_preference_exact_and_target_outweighs_biased_feedback():
    cfg = RewardConfig(pref_items=2, target_weight=1.0, liked_weight=0.5, disliked_weight=0.5)
    target = {"genre:western", "era:1970s"}
    # best = 1*2 + 0.5*1 (liked 'star:x' not on the target) = 2.5
    items = [{"genre:western", "star:x"}, {"genre:comedy", "star:y"}]
    # item 1: (1 + 0.5) / 2.5 = 0.6; item 2: (0 - 0.5 for disliked star:y) -> clamped 0; mean over 2
    assert preference_reward(items, target, {"star:x"}, {"star:y"}, cfg) == pytest.approx(0.3)
    # The simulator 'dislikes' westerns (biased): the target has that attribute, so it still counts positively.
    assert preference_reward([{"genre:western", "era:1970s"}], target, set(), {"genre:western"}, cfg) == \
        pytest.approx((1.0 + 0.0) / 2)
    assert preference_reward([], target, config=cfg) == 0.0
    assert preference_reward([{"a"}], set(), config=cfg) == 0.0


def test_score_answer_total():
    cfg = RewardConfig(format_weight=0.2, rec_weight=1.0, pref_weight=0.3, pref_items=1)
    p = parse_answer("Top-10: 2, 1, 3, 4, 5, 6, 7, 8, 9, 10", CANDS)
    attrs = {"id2": {"genre:a"}, "id1": {"genre:b"}}
    out = score_answer(p, 20, ["id1"], {"genre:b"}, lambda i: attrs.get(i, set()), config=cfg)
    assert out["format"] == 1.0 and out["recommendation"] == 0.5 and out["preference"] == 0.0
    assert out["total"] == pytest.approx(0.2 + 0.5)


def test_match_order_ranks_by_stated_then_liked_attributes_ties_in_candidate_order():
    """The distractor order of the reasoning traces (and of bench/rerank_headroom.py's attribute match)."""
    from smtpo_fast.data.catalog import Catalog, Item
    from smtpo_fast.recommender.traces import match_order

    catalog = Catalog([Item("a", "A (1990)", "A", None, genres=["drama"]),
                       Item("b", "B (1990)", "B", None, genres=["comedy"]),
                       Item("c", "C (1990)", "C", None, genres=["comedy", "western"]),
                       Item("d", "D (1990)", "D", None, genres=["western"]),
                       Item("e", "E (1990)", "E", None, genres=["horror"])])
    # stated comedy: 2 + 1 each for b and c; liked western: +1 for c and d; a, e: 0, kept in candidate order
    assert match_order(["a", "b", "c", "d", "e"], ["genre:comedy"], ["genre:western"], catalog) == \
        ["c", "b", "d", "a", "e"]
    assert match_order(["e", "a"], [], [], catalog) == ["e", "a"]


def test_examples_name_a_known_task():
    from smtpo_fast.simulator.tasks import _with_answer

    with pytest.raises(ValueError, match="task"):
        _with_answer([], "x", "guessing")
