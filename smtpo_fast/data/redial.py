"""ReDial's official JSONL format: a streaming reader that validates every line, and a writer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .dialogue import RECOMMENDER, SEEKER, Dialogue, Utterance
from .errors import DataFormatError, SkipCounter

MENTION = re.compile(r"@(\d+)")
REQUIRED_FIELDS = ("conversationId", "messages", "movieMentions", "initiatorWorkerId", "respondentWorkerId")
FEEDBACK_KEYS = ("suggested", "seen", "liked")


def clean_name(name: str) -> str:
    return " ".join(str(name).split())


def _questions(record: dict, key: str, path, line: int) -> dict[str, dict]:
    value = record.get(key, {})
    # The official files write an empty questionnaire as [] rather than {}.
    if value in (None, []):
        return {}
    if not isinstance(value, dict):
        raise DataFormatError(path, line, f"{key} must be an object mapping movie id to answers")
    out = {}
    for movie_id, answers in value.items():
        if not isinstance(answers, dict) or any(k not in answers for k in FEEDBACK_KEYS):
            raise DataFormatError(path, line, f"{key}[{movie_id!r}] must have suggested, seen and liked")
        out[str(movie_id)] = {k: int(answers[k]) for k in FEEDBACK_KEYS}
    return out


def parse_redial_record(record, path, line: int) -> Dialogue:
    """Validate one decoded JSON object and turn it into a `Dialogue` (raises `DataFormatError`)."""
    if not isinstance(record, dict):
        raise DataFormatError(path, line, f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise DataFormatError(path, line, "missing field(s): " + ", ".join(missing))
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DataFormatError(path, line, "messages must be a list")
    if not messages:
        raise DataFormatError(path, line, "empty dialogue: no messages")
    mentions = record["movieMentions"]
    if mentions in (None, []):
        mentions = {}
    if not isinstance(mentions, dict):
        raise DataFormatError(path, line, "movieMentions must be an object mapping movie id to name")
    item_names = {str(k): clean_name(v if v is not None else "") for k, v in mentions.items()}
    seeker_id, recommender_id = record["initiatorWorkerId"], record["respondentWorkerId"]
    utterances = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "text" not in message or "senderWorkerId" not in message:
            raise DataFormatError(path, line, f"message {index} must have text and senderWorkerId")
        sender = message["senderWorkerId"]
        if sender == seeker_id:
            role = SEEKER
        elif sender == recommender_id:
            role = RECOMMENDER
        else:
            raise DataFormatError(path, line, f"message {index}: senderWorkerId {sender} is neither the "
                                              f"initiator ({seeker_id}) nor the respondent ({recommender_id})")
        raw = str(message["text"])
        ids: list[str] = []
        for movie_id in MENTION.findall(raw):
            if movie_id not in item_names:
                raise DataFormatError(path, line, f"message {index} mentions unknown @{movie_id} "
                                                  "(not in movieMentions)")
            if movie_id not in ids:
                ids.append(movie_id)
        text = MENTION.sub(lambda m: item_names[m.group(1)] or m.group(0), raw)
        meta = {k: message[k] for k in ("messageId", "timeOffset", "senderWorkerId") if k in message}
        utterances.append(Utterance(role=role, text=text, raw_text=raw, item_ids=ids, meta=meta))
    return Dialogue(
        dialogue_id=str(record["conversationId"]),
        source="redial",
        utterances=utterances,
        item_names=item_names,
        seeker_feedback=_questions(record, "initiatorQuestions", path, line),
        recommender_feedback=_questions(record, "respondentQuestions", path, line),
        meta={"initiatorWorkerId": seeker_id, "respondentWorkerId": recommender_id,
              "movieMentions": {str(k): v for k, v in mentions.items()}},
    )


def read_redial(path: str | Path, skip_bad: bool = False, skipped: SkipCounter | None = None) -> Iterator[Dialogue]:
    """Stream the dialogues of a ReDial JSONL file. A malformed line raises `DataFormatError` naming file and
    line, unless `skip_bad`, in which case it is counted in `skipped` and passed over. Blank lines are ignored."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, line_no, f"invalid JSON: {e.msg} (column {e.colno})") from None
                dialogue = parse_redial_record(record, path, line_no)
            except DataFormatError as error:
                if not skip_bad:
                    raise
                if skipped is not None:
                    skipped.add(error)
                continue
            yield dialogue


def to_redial_record(dialogue: Dialogue) -> dict:
    """The official JSON object for a dialogue read by `read_redial` (or built by the synthetic generator)."""
    seeker_id = dialogue.meta.get("initiatorWorkerId", 1)
    recommender_id = dialogue.meta.get("respondentWorkerId", 2)
    messages = []
    for index, utt in enumerate(dialogue.utterances):
        sender = seeker_id if utt.role == SEEKER else recommender_id
        messages.append({
            "timeOffset": utt.meta.get("timeOffset", index * 10),
            "text": utt.raw_text,
            "senderWorkerId": utt.meta.get("senderWorkerId", sender),
            "messageId": utt.meta.get("messageId", index),
        })
    return {
        "movieMentions": dialogue.meta.get("movieMentions", dict(dialogue.item_names)),
        "respondentQuestions": dialogue.recommender_feedback,
        "messages": messages,
        "conversationId": dialogue.dialogue_id,
        "respondentWorkerId": recommender_id,
        "initiatorWorkerId": seeker_id,
        "initiatorQuestions": dialogue.seeker_feedback,
    }


def write_redial(dialogues: Iterable[Dialogue], path: str | Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for dialogue in dialogues:
            f.write(json.dumps(to_redial_record(dialogue)) + "\n")
            count += 1
    return count
