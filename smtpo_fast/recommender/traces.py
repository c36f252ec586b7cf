"""Reasoning-SFT examples built from the data: for a recommendation turn, the prompt (dialogue + retriever
candidates, the true target among them) and an answer whose reasoning is grounded in the catalog: the preferences
the seeker stated, which candidates match which of them (the target and the closest distractors), a one-line
explanation, and the ranked list with the target first and the other candidates by how well they match."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from ..data.catalog import Catalog
from ..simulator.tasks import all_item_attributes, display_name
from .prompt import PromptConfig, attribute_vocabulary, build_prompt, format_answer, stated_preferences


def candidates_with_target(candidates: list[str], target: str, k: int, rng: random.Random) -> list[str]:
    """The first k candidates with `target` among them: kept where the retriever put it, else put at a random
    position (so the model cannot learn 'the target is always number 1')."""
    out = [c for c in candidates if c != target][:k - 1] if target not in candidates[:k] else list(candidates[:k])
    if target not in out:
        out.insert(rng.randrange(len(out) + 1), target)
    return out


MAX_PREFERENCES = 4
"""Stated preferences a trace names (the first ones the seeker's words give)."""


def match_order(candidates: list[str], preferences: list[str], liked_attributes: Iterable[str],
                catalog: Catalog) -> list[str]:
    """`candidates` best-matching first, as the traces rank the distractors: by the overlap of each item's
    attributes with the stated `preferences` (counted twice: the seeker said them) and with those plus the liked
    movies' attributes (only a hint); ties keep the candidates' order."""
    stated = set(preferences)
    wanted = stated | set(liked_attributes)

    def score(c: str) -> int:
        attrs = all_item_attributes(c, catalog)
        return 2 * len(attrs & stated) + len(attrs & wanted)
    return sorted(candidates, key=lambda c: -score(c))  # stable: ties keep the candidates' order


def reasoning_answer(candidates: list[str], target: str, preferences: list[str], liked_attributes: Iterable[str],
                     catalog: Catalog, top_n: int = 10, shown_matches: int = 2) -> str:
    """The answer text for a turn whose true target is `target` (see the module docstring)."""
    wanted = set(preferences) | set(liked_attributes)
    order = {c: k for k, c in enumerate(candidates)}
    ranked = [target] + match_order([c for c in candidates if c != target], preferences, liked_attributes, catalog)
    matches = []
    for c in ranked[:shown_matches]:
        attrs = all_item_attributes(c, catalog)
        hit = sorted(attrs & set(preferences)) or sorted(attrs & wanted)[:2]
        if c == target and not hit:
            hit = sorted(a for a in attrs if a.startswith("genre:"))[:2]
        matches.append((order[c] + 1, hit[:2]))
    explanation = f"[{order[target] + 1}] {display_name(target, catalog)} fits best."
    return format_answer(preferences, matches, [order[c] + 1 for c in ranked[:top_n]], explanation)


def reasoning_examples(turns: Iterable[dict], catalog: Catalog,
                       candidate_fn: Callable[[list[dict]], list[list[str]]], config: PromptConfig | None = None,
                       seed: int = 0, max_preferences: int = MAX_PREFERENCES) -> list[dict]:
    """Chat SFT examples (`{"messages": [...], "dialogue_id", "turn_index", "target"}`), one per turn and target
    item in the catalog. `candidate_fn(turns)` gives each turn's ranked candidate ids (e.g. the retriever's
    top-k)."""
    config = config or PromptConfig()
    rng = random.Random(seed)
    vocab = attribute_vocabulary(catalog)
    turns = [t for t in turns if t["context"] and any(i in catalog for i in t["new_target_ids"])]
    if not turns:
        return []
    candidate_lists = candidate_fn(turns)
    out = []
    for turn, retrieved in zip(turns, candidate_lists):
        preferences = stated_preferences(turn["context"], vocab)[:max_preferences]
        for target in [i for i in turn["new_target_ids"] if i in catalog]:
            candidates = candidates_with_target(list(retrieved), target, config.num_candidates, rng)
            answer = reasoning_answer(candidates, target, preferences, turn["liked_attributes"], catalog,
                                      config.top_n)
            messages = build_prompt(turn["context"], candidates, catalog, config)
            out.append({"messages": messages + [{"role": "assistant", "content": answer}],
                        "dialogue_id": turn["dialogue_id"], "turn_index": turn["turn_index"], "target": target})
    return out
