"""The three rewards of a recommender answer, each in [0, 1] and logged separately, and their weighted sum.

- format: 0 unless the answer has a parseable ranked list; otherwise the mean of four checks: share of listed
  numbers that are candidates, share that are not repeats, list length (min(len, n) / n for n = min(top_n, K)),
  and 1 when the answer fits the length cap (else 0).
- recommendation: the rank of the data's true target in the top-n list, as reciprocal rank (1/rank) or NDCG@n
  (1/log2(rank + 1) for one target; DCG/IDCG for several); 0 when no target is listed.
- preference: how well the first `pref_items` recommended items' attributes match what is known about the seeker:
  the true target's attributes (weight `target_weight`), the attributes the simulator said it liked (weight
  `liked_weight`) and disliked (minus `disliked_weight`). An attribute the target has always counts with the
  target's weight, so the simulator's (possibly biased) words cannot outweigh what the data knows. Per item,
  (sum of matched weights - sum of disliked weights) / (the best possible sum), clamped to [0, 1]; averaged over
  the items (missing items count 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .parse import ParsedAnswer


@dataclass
class RewardConfig:
    """How an answer is scored."""

    top_n: int = 10
    """Length of the ranked list that is scored."""
    rank_metric: str = "rr"
    """'rr' (reciprocal rank) or 'ndcg' (NDCG@top_n) for the recommendation reward."""
    max_chars: int = 600
    """Length cap of an answer for the format reward."""
    pref_items: int = 3
    """Recommended items (from the top) whose attributes the preference reward reads."""
    target_weight: float = 1.0
    """Weight of an attribute the true target has."""
    liked_weight: float = 0.5
    """Weight of an attribute the simulator said the seeker likes (and the target lacks)."""
    disliked_weight: float = 0.5
    """Penalty of an attribute the simulator said the seeker dislikes (and the target lacks)."""
    format_weight: float = 0.2
    """Weight of the format reward in the total."""
    rec_weight: float = 1.0
    """Weight of the recommendation reward in the total."""
    pref_weight: float = 0.3
    """Weight of the preference reward in the total (0: the 'without preference reward' ablation)."""


def format_reward(parsed: ParsedAnswer, num_candidates: int, config: RewardConfig | None = None) -> float:
    config = config or RewardConfig()
    if not parsed.found:
        return 0.0
    listed = len(parsed.numbers)
    valid = (listed - parsed.invalid) / listed
    unique = (listed - parsed.repeats) / listed
    wanted = max(1, min(config.top_n, num_candidates))
    full = min(len(parsed.ranked), wanted) / wanted
    short = 1.0 if parsed.chars <= config.max_chars else 0.0
    return (valid + unique + full + short) / 4.0


def target_ranks(ranked_ids: list[str], targets: list[str], top_n: int) -> list[int]:
    """1-based ranks of the targets found in the first top_n ids."""
    head = ranked_ids[:top_n]
    return sorted(head.index(t) + 1 for t in set(targets) if t in head)


def recommendation_reward(ranked_ids: list[str], targets: list[str], config: RewardConfig | None = None) -> float:
    config = config or RewardConfig()
    ranks = target_ranks(ranked_ids, targets, config.top_n)
    if not ranks:
        return 0.0
    if config.rank_metric == "rr":
        return 1.0 / ranks[0]
    if config.rank_metric == "ndcg":
        dcg = sum(1.0 / math.log2(r + 1) for r in ranks)
        ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(set(targets)), config.top_n) + 1))
        return dcg / ideal
    raise ValueError(f"rank_metric: expected 'rr' or 'ndcg', got {config.rank_metric!r}")


def preference_reward(item_attribute_sets: list[set[str]], target_attributes: set[str], liked: set[str] = frozenset(),
                      disliked: set[str] = frozenset(), config: RewardConfig | None = None) -> float:
    """`item_attribute_sets`: attributes of the recommended items, best first (only the first `pref_items`
    count)."""
    config = config or RewardConfig()
    liked_only, disliked_only = set(liked) - set(target_attributes), set(disliked) - set(target_attributes)
    best = config.target_weight * len(target_attributes) + config.liked_weight * len(liked_only)
    if best <= 0 or config.pref_items <= 0:
        return 0.0
    total = 0.0
    for attrs in item_attribute_sets[:config.pref_items]:
        gain = (config.target_weight * len(attrs & target_attributes) + config.liked_weight * len(attrs & liked_only)
                - config.disliked_weight * len(attrs & disliked_only))
        total += min(1.0, max(0.0, gain / best))
    return total / config.pref_items


def total_reward(rewards: dict[str, float], config: RewardConfig | None = None) -> float:
    config = config or RewardConfig()
    return (config.format_weight * rewards["format"] + config.rec_weight * rewards["recommendation"]
            + config.pref_weight * rewards["preference"])


def score_answer(parsed: ParsedAnswer, num_candidates: int, targets: list[str], target_attributes: set[str],
                 attributes_of, liked: set[str] = frozenset(), disliked: set[str] = frozenset(),
                 config: RewardConfig | None = None) -> dict[str, float]:
    """All rewards of one parsed answer: {"format", "recommendation", "preference", "total"}. `attributes_of`
    maps a catalog id to its attribute set."""
    config = config or RewardConfig()
    out = {"format": format_reward(parsed, num_candidates, config),
           "recommendation": recommendation_reward(parsed.ranked_ids, targets, config),
           "preference": preference_reward([attributes_of(i) for i in parsed.ranked_ids], target_attributes, liked,
                                           disliked, config)}
    out["total"] = total_reward(out, config)
    return out
