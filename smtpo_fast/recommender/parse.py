"""Reading a generated answer back: the ranked candidate numbers of its last `Top-10:` line, mapped to catalog
ids, with everything the format reward needs to know about what went wrong. Never raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .prompt import TOP_LINE

_INT = re.compile(r"\d+")


@dataclass
class ParsedAnswer:
    found: bool
    """A `Top-10:` line with at least one number was present."""
    numbers: list[int] = field(default_factory=list)
    """Every number of the line as written (repeats and out-of-range ones included)."""
    ranked: list[int] = field(default_factory=list)
    """Valid candidate numbers (1..K), first occurrence only, in order."""
    ranked_ids: list[str] = field(default_factory=list)
    """`ranked` as catalog ids."""
    invalid: int = 0
    """Numbers outside 1..K (items not among the candidates)."""
    repeats: int = 0
    """Numbers that were already listed."""
    chars: int = 0
    """Length of the whole answer in characters."""


def parse_answer(text: str, candidates: list[str]) -> ParsedAnswer:
    """The answer's ranked list. `candidates` are the prompt's catalog ids (number k is candidates[k-1]). Uses the
    last `Top-10:` line (a model that restarts its answer is judged on its final list); a line that runs on
    into prose keeps the numbers before the first word."""
    text = text if isinstance(text, str) else ""
    parsed = ParsedAnswer(found=False, chars=len(text))
    lines = [m for m in (TOP_LINE.search(line) for line in text.splitlines()) if m]
    if not lines:
        return parsed
    body = lines[-1].group(1)
    cut = re.search(r"[A-Za-z]{2,}", body)
    body = body[:cut.start()] if cut else body
    numbers = [int(n) for n in _INT.findall(body)]
    if not numbers:
        return parsed
    parsed.found, parsed.numbers = True, numbers
    for n in numbers:
        if not 1 <= n <= len(candidates):
            parsed.invalid += 1
        elif n in parsed.ranked:
            parsed.repeats += 1
        else:
            parsed.ranked.append(n)
    parsed.ranked_ids = [candidates[n - 1] for n in parsed.ranked]
    return parsed
