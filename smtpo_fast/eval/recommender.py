"""Static and interactive evaluation of recommenders.

A *ranker* maps queries (`{"context", "context_item_ids", "feedback"}`) to ranked catalog ids; every method of
the comparison table is one: `PopularityRanker`, `RetrieverRanker` (the retriever alone) and `LLMRanker` (an LLM
recommender reading the retriever's candidates; its top-10 comes first, then the rest of the retriever's ranking,
so Recall@50 is defined for it too).

Static: Recall@1/10/50 and NDCG@10 over every recommendation turn of a test file whose targets are new items
(ReDial convention). Interactive: from each test turn's context, up to T turns with the target-aware simulator
(its target is the turn's item): each turn the ranker recommends, the conversation ends with success once the
target is ranked first, else the simulator replies and the next turn starts; success@t is the share of
conversations that succeeded by turn t, Recall@k per turn is over the conversations (all of them: one that has
succeeded keeps its final list)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..recommender.generation import generate_answers
from ..recommender.parse import parse_answer
from ..recommender.prompt import PromptConfig, build_prompt, recommendation_utterance
from .metrics import recall_at, summarise_static


class PopularityRanker:
    """Most-mentioned training items first (items already in the dialogue left out)."""

    name = "popularity"

    def __init__(self, popularity: dict[str, float]):
        self.order = [i for i, _ in sorted(popularity.items(), key=lambda kv: -kv[1])]

    @classmethod
    def from_turns(cls, turns, catalog) -> "PopularityRanker":
        counts = {i: 0.0 for i in catalog.ids}
        for t in turns:
            for i in t["all_target_ids"]:
                if i in counts:
                    counts[i] += 1
        return cls(counts)

    def rank(self, queries: list[dict], k: int = 50) -> list[list[str]]:
        return [[i for i in self.order if i not in set(q.get("context_item_ids", []))][:k] for q in queries]


class RetrieverRanker:
    """The retriever's own ranking."""

    name = "retriever"

    def __init__(self, retriever, method: str = "fused"):
        self.retriever, self.method = retriever, method

    def rank(self, queries: list[dict], k: int = 50) -> list[list[str]]:
        return self.retriever.topk(queries, k, self.method)[0]


class LLMRanker:
    """An LLM recommender over the candidate ranker's top `prompt.num_candidates` (greedy decoding)."""

    def __init__(self, model, tokenizer, catalog, candidates, prompt: PromptConfig | None = None,
                 max_new_tokens: int = 112, batch_size: int = 16, max_prompt_tokens: int = 768, name: str = "llm"):
        self.model, self.tokenizer, self.catalog, self.candidates = model, tokenizer, catalog, candidates
        self.prompt = prompt or PromptConfig()
        self.max_new_tokens, self.batch_size, self.max_prompt_tokens = max_new_tokens, batch_size, max_prompt_tokens
        self.name = name
        self.last_answers: list[str] = []
        self.parse_failures = 0

    def rank(self, queries: list[dict], k: int = 50) -> list[list[str]]:
        retrieved = self.candidates.rank(queries, max(k, self.prompt.num_candidates))
        prompts = [build_prompt(q["context"], r[:self.prompt.num_candidates], self.catalog, self.prompt)
                   for q, r in zip(queries, retrieved)]
        answers = generate_answers(self.model, self.tokenizer, prompts, 1, self.max_new_tokens, 0.0,
                                   batch_size=self.batch_size, max_prompt_tokens=self.max_prompt_tokens)
        self.last_answers = [a[0].text for a in answers]
        out = []
        for r, a in zip(retrieved, self.last_answers):
            parsed = parse_answer(a, r[:self.prompt.num_candidates])
            self.parse_failures += not parsed.found
            head = parsed.ranked_ids[:self.prompt.top_n]
            out.append((head + [i for i in r if i not in head])[:k])
        return out


def static_turns(turns, catalog=None) -> list[dict]:
    """Test turns that are scored: a non-empty context and at least one new target item (in the catalog when
    one is given: items outside it can never be ranked)."""
    out = []
    for t in turns:
        targets = [i for i in t["new_target_ids"] if catalog is None or i in catalog]
        if t["context"] and targets:
            out.append(dict(t, eval_targets=targets))
    return out


def _query(context, mentioned, feedback):
    return {"context": context, "context_item_ids": mentioned, "feedback": feedback}


def static_eval(ranker, turns: list[dict], ks=(1, 10, 50), batch_size: int = 64, progress: bool = False):
    """(metrics, prediction rows) of a ranker on `static_turns` output."""
    rows = []
    batches = range(0, len(turns), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc=f"static {getattr(ranker, 'name', '')}", unit="batch")
    for start in batches:
        chunk = turns[start:start + batch_size]
        ranked = ranker.rank([_query(t["context"], t["context_item_ids"], t.get("feedback", "")) for t in chunk],
                             max(ks))
        for t, r in zip(chunk, ranked):
            rows.append({"dialogue_id": t["dialogue_id"], "turn_index": t["turn_index"],
                         "target_ids": t["eval_targets"], "ranked_ids": r[:max(ks)]})
    return summarise_static(rows, ks), rows


def interactive_eval(ranker, simulator, turns: list[dict], max_turns: int = 5, ks=(1, 10), catalog=None,
                     progress: bool = False):
    """(metrics, prediction rows) of T-turn conversations with a target-aware simulator (see the module
    docstring). Metrics: `success@t` and `recall@k@t` for t = 1..max_turns, and `success` (= success@T)."""
    states = [{"context": [dict(c) for c in t["context"]], "mentioned": list(t["context_item_ids"]),
               "feedback": t.get("feedback", ""), "targets": t["eval_targets"], "done_at": None, "lists": [],
               "replies": [], "turn": t} for t in turns]
    per_turn = {f"recall@{k}@{n}": [] for n in range(1, max_turns + 1) for k in ks}
    success = {n: 0 for n in range(1, max_turns + 1)}
    steps = range(1, max_turns + 1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"interactive {getattr(ranker, 'name', '')}", unit="turn")
    for n in steps:
        active = [s for s in states if s["done_at"] is None]
        if active:
            ranked = ranker.rank([_query(s["context"], s["mentioned"], s["feedback"]) for s in active], max(ks))
            for s, r in zip(active, ranked):
                s["lists"].append(r[:max(ks)])
                if r and r[0] in s["targets"]:
                    s["done_at"] = n
            talking = [s for s in active if s["done_at"] is None and n < max_turns]
            if talking:
                dialogues = [s["context"] + [{"role": "recommender",
                                              "text": recommendation_utterance(s["lists"][-1], catalog)}]
                             for s in talking]
                replies = simulator.respond_batch(dialogues, [s["lists"][-1][:3] for s in talking],
                                                  [s["targets"] for s in talking])
                for s, d, fb in zip(talking, dialogues, replies):
                    s["context"] = d + [{"role": "seeker", "text": fb.text}]
                    s["mentioned"] += [i for i in s["lists"][-1][:3] if i not in s["mentioned"]]
                    s["feedback"] = fb.text
                    s["replies"].append(fb.text)
        for s in states:
            final = s["lists"][-1] if s["lists"] else []
            for k in ks:
                per_turn[f"recall@{k}@{n}"] += recall_at(final, s["targets"], k)
        success[n] = sum(s["done_at"] is not None for s in states)
    metrics = {name: float(np.mean(v)) if v else 0.0 for name, v in per_turn.items()}
    metrics.update({f"success@{n}": c / max(1, len(states)) for n, c in success.items()})
    metrics["success"] = metrics[f"success@{max_turns}"]
    metrics["conversations"] = len(states)
    rows = [{"dialogue_id": s["turn"]["dialogue_id"], "turn_index": s["turn"]["turn_index"],
             "target_ids": s["targets"], "ranked_ids": s["lists"][-1] if s["lists"] else [],
             "turn_lists": s["lists"], "simulator_replies": s["replies"], "success_turn": s["done_at"]}
            for s in states]
    return metrics, rows


def write_predictions(path: str | Path, rows: list[dict], **extra) -> None:
    """One JSON line per recommendation turn (`extra` fields, e.g. the method, added to each)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({**extra, **row}) + "\n")
