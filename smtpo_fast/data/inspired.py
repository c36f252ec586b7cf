"""INSPIRED's official TSV format (one utterance per row): a streaming reader that validates every row, and a
writer. Rows are grouped into dialogues by consecutive `dialog_id`."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .dialogue import RECOMMENDER, SEEKER, Dialogue, Utterance
from .errors import DataFormatError, SkipCounter

COLUMNS = ("dialog_id", "utt_id", "speaker", "turn_id", "text", "text_with_placeholder", "movies", "genres",
           "people_names", "movie_dict", "genre_dict", "actor_dict", "director_dict", "others_dict",
           "expert_label", "second_label", "fine_label", "coarse_label", "movie_id")
REQUIRED = ("dialog_id", "speaker", "text", "movies")
DICT_COLUMNS = ("movie_dict", "genre_dict", "actor_dict", "director_dict", "others_dict")
ROLES = {"SEEKER": SEEKER, "RECOMMENDER": RECOMMENDER}


def split_list(cell: str) -> list[str]:
    """INSPIRED writes several mentions in one cell separated by ';' (with stray spaces)."""
    out = []
    for part in cell.split(";"):
        part = " ".join(part.split())
        if part and part not in out:
            out.append(part)
    return out


def parse_dict_cell(cell: str) -> dict | None:
    """A per-dialogue map such as `{'Frozen (2013)': 0, 'drama': 1}`. The official dev file has one cell with a
    lost closing quote (`'Office Space (1999): 1}`), so a cell `ast` rejects is re-read as `'key': int` pairs;
    None when even that fails."""
    try:
        value = ast.literal_eval(cell)
        return value if isinstance(value, dict) else None
    except (ValueError, SyntaxError):
        pass
    body = cell.strip()
    if not (body.startswith("{") and body.endswith("}")):
        return None
    out = {}
    for part in re.split(r",\s*(?=['\"])", body[1:-1]):
        key, sep, value = part.rpartition(":")
        if not sep or not value.strip().isdigit():
            return None
        out[key.strip().strip("'\"")] = int(value)
    return out


def _parse_row(fields: list[str], header: list[str], path, line: int) -> dict:
    if len(fields) != len(header):
        raise DataFormatError(path, line, f"expected {len(header)} tab-separated fields, got {len(fields)}")
    row = dict(zip(header, fields))
    if not row["dialog_id"].strip():
        raise DataFormatError(path, line, "empty dialog_id")
    if row["speaker"] not in ROLES:
        raise DataFormatError(path, line, f"speaker must be SEEKER or RECOMMENDER, got {row['speaker']!r}")
    for column in DICT_COLUMNS:
        cell = row.get(column, "")
        if cell.strip():
            if parse_dict_cell(cell) is None:
                raise DataFormatError(path, line, f"{column} is not a Python dict literal: {cell[:60]!r}")
    return row


def _to_dialogue(dialog_id: str, rows: list[dict]) -> Dialogue:
    utterances, names = [], {}
    for row in rows:
        movies = split_list(row["movies"])
        for movie in movies:
            names.setdefault(movie, movie)
        utterances.append(Utterance(
            role=ROLES[row["speaker"]], text=row["text"], raw_text=row["text"], item_ids=movies,
            genres=split_list(row.get("genres", "")), people=split_list(row.get("people_names", "")),
            meta=dict(row)))
    first = rows[0]
    meta = {k: first.get(k, "") for k in ("fine_label", "coarse_label", "movie_id")}
    for column in DICT_COLUMNS:
        cell = first.get(column, "")
        meta[column] = parse_dict_cell(cell) if cell.strip() else {}
    return Dialogue(dialogue_id=dialog_id, source="inspired", utterances=utterances, item_names=names, meta=meta)


def read_inspired(path: str | Path, skip_bad: bool = False, skipped: SkipCounter | None = None) -> Iterator[Dialogue]:
    """Stream the dialogues of an INSPIRED TSV file (header row first). A malformed row raises `DataFormatError`
    naming file and line, unless `skip_bad` (then it is counted in `skipped` and dropped)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        header_line = f.readline()
        header = header_line.rstrip("\r\n").split("\t")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataFormatError(path, 1, "header lacks column(s): " + ", ".join(missing))
        current_id, rows = None, []
        for line_no, line in enumerate(f, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                row = _parse_row(line.split("\t"), header, path, line_no)
            except DataFormatError as error:
                if not skip_bad:
                    raise
                if skipped is not None:
                    skipped.add(error)
                continue
            if row["dialog_id"] != current_id:
                if rows:
                    yield _to_dialogue(current_id, rows)
                current_id, rows = row["dialog_id"], []
            rows.append(row)
        if rows:
            yield _to_dialogue(current_id, rows)


def write_inspired(dialogues: Iterable[Dialogue], path: str | Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for dialogue in dialogues:
            for index, utt in enumerate(dialogue.utterances):
                row = {c: "" for c in COLUMNS}
                row.update({k: v for k, v in utt.meta.items() if k in row})
                row.update(dialog_id=dialogue.dialogue_id, text=utt.raw_text,
                           speaker="SEEKER" if utt.role == SEEKER else "RECOMMENDER",
                           movies="; ".join(utt.item_ids), genres="; ".join(utt.genres),
                           people_names="; ".join(utt.people))
                row.setdefault("utt_id", str(index + 1))
                f.write("\t".join(str(row[c]).replace("\t", " ").replace("\n", " ") for c in COLUMNS) + "\n")
            count += 1
    return count
