"""The simulator's structured tail and its parser.

A simulator reply is the seeker's utterance, then one line the simulator is trained to emit:

    [feedback] accept: yes; likes: genre:comedy, director:ivan reitman; dislikes: none

`parse_feedback` reads it back; a reply without a usable tail falls back to reading the utterance itself (a few
cue phrases), and says so in `Feedback.parsed`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TAIL_MARKER = "[feedback]"
_FIELD = re.compile(r"\b(accept|likes|dislikes)\s*[:=]\s*([^;\n]*)", re.IGNORECASE)
_YES = {"yes", "y", "true", "1", "accept", "accepted"}
_NO = {"no", "n", "false", "0", "reject", "rejected"}
_ACCEPT_CUES = ("sounds good", "sounds great", "sounds interesting", "i'll check", "i will check", "i'll watch",
                "i will watch", "i'll give it", "i will give it", "i'll try", "i will try", "i love", "i loved",
                "i liked", "great suggestion", "good suggestion", "thank", "perfect", "awesome", "that one")
_REJECT_CUES = ("not really", "not a fan", "don't like", "didn't like", "do not like", "did not like", "not for me",
                "something else", "anything else", "no thanks", "hated", "not interested", "boring")


@dataclass
class Feedback:
    text: str
    """The seeker's utterance (the tail removed)."""
    accepted: bool
    """Whether the seeker accepts the recommendation."""
    liked_attributes: list[str] = field(default_factory=list)
    """Typed attributes the seeker says they like, e.g. 'genre:comedy'."""
    disliked_attributes: list[str] = field(default_factory=list)
    parsed: bool = True
    """False when the reply had no well-formed tail and `accepted` came from cue phrases in the text."""


def format_attributes(attributes: list[str]) -> str:
    return ", ".join(attributes) if attributes else "none"


def format_tail(accepted: bool, liked: list[str], disliked: list[str]) -> str:
    return (f"{TAIL_MARKER} accept: {'yes' if accepted else 'no'}; likes: {format_attributes(liked)}; "
            f"dislikes: {format_attributes(disliked)}")


def _attributes(value: str) -> list[str]:
    out = []
    for part in value.split(","):
        part = " ".join(part.strip().lower().split())
        if not part or part == "none" or ":" not in part:
            continue
        kind, name = (s.strip() for s in part.split(":", 1))
        if kind and name and f"{kind}:{name}" not in out:
            out.append(f"{kind}:{name}")
    return out


def accepted_from_text(text: str) -> bool:
    """Cue-phrase reading of an utterance without a tail: accept on a positive cue that no negative cue
    contradicts."""
    lowered = " ".join(text.lower().split())
    if any(cue in lowered for cue in _REJECT_CUES):
        return False
    return any(cue in lowered for cue in _ACCEPT_CUES)


def parse_feedback(generation: str) -> Feedback:
    """A `Feedback` from a generated reply, whatever shape it is in (never raises)."""
    text = generation if isinstance(generation, str) else ""
    index = text.lower().rfind(TAIL_MARKER)
    if index < 0:
        utterance = text.strip()
        return Feedback(utterance, accepted_from_text(utterance), parsed=False)
    utterance, tail = text[:index].strip(), text[index + len(TAIL_MARKER):]
    fields: dict[str, str] = {}
    for match in _FIELD.finditer(tail):
        fields.setdefault(match.group(1).lower(), match.group(2).strip())
    verdict = fields.get("accept", "").strip().lower().split()
    verdict = verdict[0].strip(".,!") if verdict else ""
    if verdict in _YES:
        accepted, parsed = True, True
    elif verdict in _NO:
        accepted, parsed = False, True
    else:
        accepted, parsed = accepted_from_text(utterance), False
    return Feedback(utterance, accepted, _attributes(fields.get("likes", "")), _attributes(fields.get("dislikes", "")),
                    parsed=parsed)
