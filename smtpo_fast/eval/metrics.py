"""Ranking metrics with the ReDial / CRSLab convention: every (turn, target item) pair is one sample."""

from __future__ import annotations

import math


def recall_at(ranked: list[str], targets: list[str], k: int) -> list[float]:
    """One 0/1 value per target: whether it is in the first k items."""
    head = set(ranked[:k])
    return [1.0 if t in head else 0.0 for t in targets]


def ndcg_at(ranked: list[str], targets: list[str], k: int) -> list[float]:
    """One value per target (the target alone is relevant): 1 / log2(rank + 1) within the first k, else 0."""
    head = ranked[:k]
    return [1.0 / math.log2(head.index(t) + 2) if t in head else 0.0 for t in targets]


def summarise_static(rows: list[dict], ks=(1, 10, 50), ndcg_k: int = 10) -> dict[str, float]:
    """Mean Recall@k and NDCG@ndcg_k over all (turn, target) pairs of prediction rows
    (`{"target_ids", "ranked_ids"}`)."""
    values: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    values[f"ndcg@{ndcg_k}"] = []
    for row in rows:
        for k in ks:
            values[f"recall@{k}"] += recall_at(row["ranked_ids"], row["target_ids"], k)
        values[f"ndcg@{ndcg_k}"] += ndcg_at(row["ranked_ids"], row["target_ids"], ndcg_k)
    out = {name: sum(v) / len(v) if v else 0.0 for name, v in values.items()}
    out["pairs"] = len(values[f"ndcg@{ndcg_k}"])
    out["turns"] = len(rows)
    return out
