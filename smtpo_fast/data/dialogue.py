"""The common in-memory shape of a dialogue, whichever official format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

SEEKER = "seeker"
RECOMMENDER = "recommender"


@dataclass
class Utterance:
    """One message. `text` is readable (ReDial `@<id>` replaced by the movie's name); `raw_text` is the text as
    the file has it. `item_ids` are the items it mentions, in order of first mention, as the source names them
    (ReDial movie ids; INSPIRED "Title (Year)" strings until the catalog resolves them)."""

    role: str
    text: str
    raw_text: str
    item_ids: list[str] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    people: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # format-specific fields kept for writing the file back


@dataclass
class Dialogue:
    """A whole conversation. `item_names` maps every mentioned item id to its name as the file gives it;
    `seeker_feedback` maps an item id to {"suggested", "seen", "liked"} (0 no, 1 yes, 2 unsaid), the seeker's
    own answers where the format has them."""

    dialogue_id: str
    source: str
    utterances: list[Utterance]
    item_names: dict[str, str] = field(default_factory=dict)
    seeker_feedback: dict[str, dict] = field(default_factory=dict)
    recommender_feedback: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
