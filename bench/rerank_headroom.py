"""How much can a re-ranker of the retriever's candidates gain? On the test turns whose retriever top-K holds the
target (the only turns where the LLM recommender's order matters), where do simple and pretrained-LM signals put
the target, against the retriever's own order?

- retriever: the fused retriever's order;
- attribute match: the order the reasoning SFT traces give the distractors (`traces.match_order`: overlap with
  what the seeker's words name, counted twice, and with the liked movies' attributes; retriever order on ties);
- LM: a causal LM's log-prob of each candidate's title as the recommender's next words after the dialogue (sum and
  mean over the title's tokens; the prompt is shared, so each title costs a few tokens on the cached prefix);
- LM + retriever: the sum of the two ranks (retriever first on ties).

Needs a pipeline run's retriever (`smtpo run --config configs/redial.yaml` writes runs/redial/retriever):

    python bench/rerank_headroom.py --config configs/redial.yaml --lm smollm2-135m --max-turns 100 \
        --out bench/out/rerank_headroom.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchlib import machine_info, print_table, write_json  # noqa: E402


def ranks_of(order: list[int], target_positions: set[int]) -> int:
    """1-based rank of the best-placed target in `order` (a permutation of candidate positions)."""
    return min(order.index(p) for p in target_positions) + 1


@torch.no_grad()
def lm_title_scores(model, tokenizer, context, candidates, catalog, task_config) -> list[tuple[float, float]]:
    """(sum, mean) log-prob of each candidate title after the dialogue."""
    from smtpo_fast.simulator.tasks import display_name, render_history

    prefix = (f"A conversation about movies.\n{render_history(context, task_config)}\n"
              "Recommender: I think you would enjoy")
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    out = model(torch.tensor([ids]), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    scores = []
    for item in candidates:
        title = tokenizer(" " + display_name(item, catalog), add_special_tokens=False)["input_ids"]
        logps = [float(first[title[0]])]
        if len(title) > 1:
            more = model(torch.tensor([title[:-1]]), past_key_values=copy.deepcopy(out.past_key_values),
                         use_cache=True)
            table = torch.log_softmax(more.logits[0].float(), -1)
            logps += [float(table[k, title[k + 1]]) for k in range(len(title) - 1)]
        scores.append((sum(logps), sum(logps) / len(logps)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/redial.yaml", help="pipeline config of the run")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of the run")
    parser.add_argument("--k", type=int, default=10, help="retriever candidates (the prompt's num_candidates)")
    parser.add_argument("--lm", default="none", help="causal LM preset or folder for the LM rows ('none': skip)")
    parser.add_argument("--max-turns", type=int, default=0,
                        help="test turns with the target among the candidates to score (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from smtpo_fast.eval.recommender import static_turns
    from smtpo_fast.pipeline import Pipeline, load_config
    from smtpo_fast.recommender.prompt import attribute_vocabulary, stated_preferences
    from smtpo_fast.recommender.traces import MAX_PREFERENCES, match_order
    from smtpo_fast.simulator.tasks import TaskConfig

    pipeline = Pipeline(load_config(args.config, runs_dir=args.runs_dir))
    catalog = pipeline.catalog()
    test = static_turns(pipeline.turns("test"), catalog)
    retriever = pipeline.retriever()
    ranked = retriever.topk([{"context": t["context"], "context_item_ids": t["context_item_ids"], "feedback": ""}
                             for t in test], args.k)[0]
    pairs = sum(len(t["eval_targets"]) for t in test)
    hits = [(t, r) for t, r in zip(test, ranked) if set(t["eval_targets"]) & set(r)]
    if args.max_turns:
        hits = hits[:args.max_turns]
    print(f"{len(test)} test turns ({pairs} pairs); the retriever's top {args.k} holds a target in "
          f"{sum(bool(set(t['eval_targets']) & set(r)) for t, r in zip(test, ranked))}; scoring {len(hits)}")

    vocab = attribute_vocabulary(catalog)
    model = tokenizer = None
    if args.lm != "none":
        from smtpo_fast.models import load_model

        model, tokenizer = load_model(args.lm)
        model.eval()
    task_config = TaskConfig(history_utterances=6, utterance_chars=300)
    names = ["retriever", "attribute match"] + (["LM sum log-prob", "LM mean log-prob", "LM mean + retriever"]
                                                if model is not None else [])
    ranks: dict[str, list[int]] = {n: [] for n in names}
    start = time.time()
    for n, (turn, cands) in enumerate(hits):
        targets = {k for k, c in enumerate(cands) if c in turn["eval_targets"]}
        base = list(range(len(cands)))
        ranks["retriever"].append(ranks_of(base, targets))
        matched = match_order(cands, stated_preferences(turn["context"], vocab)[:MAX_PREFERENCES],
                              turn["liked_attributes"], catalog)
        ranks["attribute match"].append(ranks_of([cands.index(c) for c in matched], targets))
        if model is not None:
            scores = lm_title_scores(model, tokenizer, turn["context"], cands, catalog, task_config)
            by_sum = sorted(base, key=lambda k: (-scores[k][0], k))
            by_mean = sorted(base, key=lambda k: (-scores[k][1], k))
            ranks["LM sum log-prob"].append(ranks_of(by_sum, targets))
            ranks["LM mean log-prob"].append(ranks_of(by_mean, targets))
            combined = sorted(base, key=lambda k: (k + by_mean.index(k), k))
            ranks["LM mean + retriever"].append(ranks_of(combined, targets))
        if (n + 1) % 25 == 0:
            print(f"  {n + 1}/{len(hits)} turns, {time.time() - start:.0f}s", flush=True)

    rows = [{"ranker": "random order (expected)", "top1": 1 / args.k,
             "mrr": float(np.mean([1 / r for r in range(1, args.k + 1)]))}]
    for name, values in ranks.items():
        values = np.array(values, dtype=np.float64)
        rows.append({"ranker": name, "top1": float(np.mean(values == 1)), "mrr": float(np.mean(1 / values))})
    print(f"\nTarget first among the retriever's top {args.k}, on the {len(hits)} test turns that hold it:")
    print_table(rows, [("ranker", "ranker", ""), ("top1", "target ranked first", "{:.3f}"),
                       ("mrr", "MRR within the top K", "{:.3f}")])
    write_json(args.out, {"bench": "rerank_headroom", "machine": machine_info(torch.device("cpu")),
                          "config": vars(args), "test_turns": len(test), "scored_turns": len(hits),
                          "seconds": time.time() - start, "rows": rows})


if __name__ == "__main__":
    main()
