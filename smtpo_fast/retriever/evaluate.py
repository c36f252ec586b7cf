"""Candidate Recall@k of the retriever and its baselines on recommendation turns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METHODS = ("popularity", "bm25", "semantic", "collaborative", "zsum", "fused")
METHOD_LABELS = {
    "popularity": "Popularity (train mentions)",
    "bm25": "BM25 (context vs item text)",
    "semantic": "Semantic view alone",
    "collaborative": "Collaborative view alone",
    "zsum": "Untrained z-score sum of all view scores",
    "fused": "Fused (cross-attention, trained)",
}


def evaluation_turns(turns, new_only: bool = True, require_context: bool = True) -> list[dict]:
    """The turns that are scored: targets = the new items (or all items) the recommender utterance mentions;
    turns with no such target, or (by default) with an empty context, are left out."""
    out = []
    for t in turns:
        targets = list(t["new_target_ids"] if new_only else t["all_target_ids"])
        if not targets or (require_context and not t["context"]):
            continue
        out.append(dict(t, eval_targets=targets))
    return out


def recall_at(ranked: np.ndarray, item_ids: list[str], targets: list[list[str]], ks) -> dict[int, float]:
    """Share of (turn, target) pairs whose target is in the turn's top k (the ReDial / CRSLab convention: each
    target item of a turn is one sample); targets outside the catalog count as misses."""
    index = {i: k for k, i in enumerate(item_ids)}
    out = {k: 0.0 for k in ks}
    n_pairs = 0
    for row, target in zip(ranked, targets):
        positions = {int(p): r for r, p in enumerate(row)}
        ranks = [positions.get(index.get(t, -1), 10**9) for t in target]
        n_pairs += len(target)
        for k in ks:
            out[k] += sum(r < k for r in ranks)
    return {k: v / max(n_pairs, 1) for k, v in out.items()}


def evaluate_retriever(retriever, turns, ks=(10, 50, 100), methods=METHODS, predictions_out=None,
                       progress: bool = True) -> dict[str, dict[int, float]]:
    """Recall@k per method on `turns` (already filtered by `evaluation_turns`); optionally writes the fused
    ranking (or the last method's) per turn as JSON lines."""
    targets = [t["eval_targets"] for t in turns]
    methods = [m for m in methods if m != "fused" or retriever.model is not None]
    scores_by_method = retriever.score_methods(turns, methods, progress=progress)
    results, kmax = {}, max(max(ks), 100)
    for method in methods:
        scores = scores_by_method[method]
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
        results[method] = recall_at(top, retriever.item_ids, targets, ks)
        if predictions_out and method == ("fused" if "fused" in methods else methods[-1]):
            with open(predictions_out, "w", encoding="utf-8") as f:
                for t, row, srow in zip(turns, top, scores):
                    row = [i for i in row if np.isfinite(srow[i])]  # excluded (already mentioned) items
                    f.write(json.dumps({
                        "dialogue_id": t["dialogue_id"], "turn_index": t["turn_index"], "method": method,
                        "targets": t["eval_targets"], "candidates": [retriever.item_ids[i] for i in row],
                        "scores": [round(float(srow[i]), 4) for i in row]}) + "\n")
    return results


def results_table(results: dict, ks=(10, 50, 100), caption: str = "") -> str:
    lines = ([caption, ""] if caption else []) + [
        "| Method | " + " | ".join(f"Recall@{k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks)]
    for method, recall in results.items():
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(f"{recall[k]:.3f}" for k in ks) + " |")
    return "\n".join(lines)
