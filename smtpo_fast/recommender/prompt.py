"""The recommender's prompt (dialogue so far + numbered retriever candidates with short metadata) and its answer
format: a short reasoning chain, then one line with the ranked top-10 as candidate numbers.

    Preferences: western, 1970s
    Matches: [4] western, 1970s; [9] western
    Ranking: [4] Iron Garden (1971) fits best.
    Top-10: 4, 9, 1, 2, 3, 5, 6, 7, 8, 10

Candidate numbers (1..K) rather than catalog ids or titles: a handful of short tokens a small model copies
reliably, and a list the parser maps back to catalog ids without any fuzzy title matching."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.catalog import Catalog
from ..data.dialogue import SEEKER
from ..simulator.tasks import TaskConfig, describe_item, display_name, item_attributes, render_history

SYSTEM = ("You are a movie recommender. Read the conversation and the candidate movies, reason briefly about what "
          "the seeker wants, then rank the candidates.")
INSTRUCTION = ("Answer with: Preferences, Matches, Ranking (one line each), then 'Top-10:' followed by the numbers "
               "of your ten best candidates, best first.")
TOP_MARKER = "Top-10:"
TOP_LINE = re.compile(r"top\s*-?\s*10\s*[:=]\s*(.*)", re.IGNORECASE)
NUMBER = re.compile(r"\[?\s*(\d{1,3})\s*\]?")


@dataclass
class PromptConfig:
    """What the recommender's prompt shows."""

    num_candidates: int = 20
    """Retriever candidates in the prompt."""
    top_n: int = 10
    """Length of the ranked list the answer ends with."""
    history_utterances: int = 6
    """The most recent utterances shown."""
    utterance_chars: int = 200
    """Each utterance is cut to this many characters."""
    max_genres: int = 2
    """Genres per candidate line."""
    max_people: int = 1
    """Directors and stars (each) per candidate line."""

    def task_config(self) -> TaskConfig:
        return TaskConfig(history_utterances=self.history_utterances, utterance_chars=self.utterance_chars,
                          max_genres=self.max_genres, max_people=self.max_people)


def build_prompt(context: list[dict], candidates: list[str], catalog: Catalog | None,
                 config: PromptConfig | None = None) -> list[dict]:
    """Chat messages (system + user) for one recommendation turn. `context`: [{"role", "text"}] utterances so
    far; `candidates`: catalog ids in retriever order, numbered from 1 in the prompt."""
    config = config or PromptConfig()
    tasks = config.task_config()
    listed = "\n".join(f"[{k}] {describe_item(item, catalog, config=tasks)}" for k, item in enumerate(candidates, 1))
    user = (f"Conversation so far:\n{render_history(context, tasks)}\n\nCandidates:\n{listed or '(none)'}\n\n"
            f"{INSTRUCTION}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def attribute_vocabulary(catalog: Catalog) -> dict[str, str]:
    """Lower-cased attribute value -> typed attribute ('western' -> 'genre:western', 'clara reyes' ->
    'star:clara reyes') over the whole catalog, for spotting preferences stated in free text."""
    vocab: dict[str, str] = {}
    for item in catalog.items.values():
        for attribute in item.attributes():
            kind, value = attribute.split(":", 1)
            if kind != "writer" and len(value) > 2:
                vocab.setdefault(value, attribute)
    return vocab


_DECADE = re.compile(r"\b(1[89]\d0|20[0-2]0)'?s\b")


def stated_preferences(context: list[dict], vocab: dict[str, str]) -> list[str]:
    """Typed attributes the seeker's own words name (genres, people, decades), in order of appearance."""
    text = " ".join(u["text"].lower() for u in context if u.get("role") == SEEKER)
    found: list[tuple[int, str]] = []
    for value, attribute in vocab.items():
        if value not in text:  # a plain substring test first: the regex runs only for the few values present
            continue
        match = re.search(r"\b" + re.escape(value) + r"\b", text)
        if match:
            found.append((match.start(), attribute))
    found += [(m.start(), f"era:{m.group(1)}s") for m in _DECADE.finditer(text)]
    out: list[str] = []
    for _, attribute in sorted(found):
        if attribute not in out:
            out.append(attribute)
    return out


def _values(attributes: list[str]) -> str:
    return ", ".join(a.split(":", 1)[-1] for a in attributes)


def format_answer(preferences: list[str], matches: list[tuple[int, list[str]]], ranked: list[int],
                  explanation: str) -> str:
    """The answer text (see the module docstring): attribute values only, so small models have few tokens to
    write before the list. `matches`: (candidate number, matching typed attributes); `ranked`: candidate
    numbers, best first."""
    match_text = "; ".join(f"[{k}] {_values(attrs)}" for k, attrs in matches if attrs) or "none"
    return (f"Preferences: {_values(preferences) if preferences else 'unknown'}\n"
            f"Matches: {match_text}\nRanking: {explanation}\n{TOP_MARKER} {', '.join(str(k) for k in ranked)}")


def recommendation_utterance(ranked_ids: list[str], catalog: Catalog | None, shown: int = 3) -> str:
    """What the seeker reads: the first `shown` items of the ranked list by name."""
    names = [display_name(i, catalog) for i in ranked_ids[:shown]]
    if not names:
        return "Sorry, I have no suggestion yet. Tell me more about what you like?"
    if len(names) == 1:
        return f"I think you would enjoy {names[0]}."
    return f"I think you would enjoy {names[0]}. You might also like {' or '.join(names[1:])}."


__all__ = ["INSTRUCTION", "SYSTEM", "TOP_MARKER", "PromptConfig", "attribute_vocabulary", "build_prompt",
           "format_answer", "item_attributes", "recommendation_utterance", "stated_preferences"]
