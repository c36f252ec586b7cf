import json

import pytest

from smtpo_fast.data.dialogue import RECOMMENDER, SEEKER
from smtpo_fast.data.errors import DataFormatError, SkipCounter
from smtpo_fast.data.inspired import read_inspired, write_inspired
from smtpo_fast.data.redial import read_redial, to_redial_record, write_redial
from tests._data_fixtures import DIALOGUE, INSPIRED_HEADER, INSPIRED_ROWS, inspired_row, write_data_dir


def test_redial_reader_parses_and_round_trips(tmp_path):
    root = write_data_dir(tmp_path)
    path = root / "redial" / "test_public.jsonl"
    [dialogue] = list(read_redial(path))
    assert dialogue.dialogue_id == "42"
    assert [u.role for u in dialogue.utterances][:3] == [RECOMMENDER, SEEKER, SEEKER]
    assert dialogue.utterances[1].item_ids == ["222"]
    assert dialogue.utterances[1].text == "I loved Bridesmaids (2011)"
    assert dialogue.utterances[5].item_ids == ["222", "444"]
    assert dialogue.seeker_feedback["111"]["liked"] == 0
    assert to_redial_record(dialogue) == DIALOGUE
    out = tmp_path / "copy.jsonl"
    write_redial([dialogue], out)
    assert json.loads(out.read_text()) == DIALOGUE
    assert list(read_redial(out)) == [dialogue]


def test_inspired_reader_groups_rows_and_round_trips(tmp_path):
    root = write_data_dir(tmp_path)
    dialogues = list(read_inspired(root / "inspired" / "dev.tsv"))
    assert [d.dialogue_id for d in dialogues] == ["d1", "d2"]
    d1 = dialogues[0]
    assert len(d1.utterances) == 4
    assert d1.utterances[2].item_ids == ["Ghostbusters (1984)", "Unknown Film (1999)"]
    assert d1.utterances[2].people == ["Bill Murray"]
    assert d1.utterances[1].genres == ["comedy"]
    assert d1.meta["movie_dict"] == {"Bridesmaids (2011)": 0, "Ghostbusters (1984)": 1}
    out = tmp_path / "copy.tsv"
    write_inspired(dialogues, out)
    assert out.read_text().splitlines()[1:] == [r.replace("; ", "; ") for r in INSPIRED_ROWS]
    assert list(read_inspired(out)) == dialogues


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_json_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(DIALOGUE), '{"conversationId": "1", "messages": [}'])
    with pytest.raises(DataFormatError) as info:
        list(read_redial(path))
    assert str(info.value).startswith(f"{path}:2: invalid JSON")
    assert info.value.line == 2


def test_missing_fields(tmp_path):
    record = {k: v for k, v in DIALOGUE.items() if k not in ("movieMentions", "initiatorWorkerId")}
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(record)])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: missing field\(s\): movieMentions, initiatorWorkerId"):
        list(read_redial(path))


def test_unknown_mention(tmp_path):
    record = json.loads(json.dumps(DIALOGUE))
    record["messages"][3]["text"] = "Have you seen @999?"
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(DIALOGUE), json.dumps(record)])
    with pytest.raises(DataFormatError) as info:
        list(read_redial(path))
    assert str(info.value) == f"{path}:2: message 3 mentions unknown @999 (not in movieMentions)"


def test_empty_dialogue(tmp_path):
    record = dict(DIALOGUE, messages=[])
    path = _write_lines(tmp_path / "bad.jsonl", ["", json.dumps(record)])
    with pytest.raises(DataFormatError) as info:
        list(read_redial(path))
    assert str(info.value) == f"{path}:2: empty dialogue: no messages"


def test_skip_bad_counts_and_keeps_good_lines(tmp_path):
    path = _write_lines(tmp_path / "mixed.jsonl", [json.dumps(DIALOGUE), "not json", json.dumps(dict(DIALOGUE, messages=[])),
                                                    json.dumps(DIALOGUE)])
    skipped = SkipCounter()
    dialogues = list(read_redial(path, skip_bad=True, skipped=skipped))
    assert len(dialogues) == 2
    assert skipped.count == 2
    assert f"{path}:2: invalid JSON" in skipped.report()
    assert f"{path}:3: empty dialogue" in skipped.report()


def test_inspired_bad_rows(tmp_path):
    bad_speaker = inspired_row("d3", 1, "CRITIC", "hi")
    path = _write_lines(tmp_path / "bad.tsv", [INSPIRED_HEADER, INSPIRED_ROWS[0], bad_speaker])
    with pytest.raises(DataFormatError) as info:
        list(read_inspired(path))
    assert str(info.value) == f"{path}:3: speaker must be SEEKER or RECOMMENDER, got 'CRITIC'"
    path = _write_lines(tmp_path / "short.tsv", [INSPIRED_HEADER, "d1\t1\tSEEKER\thello"])
    with pytest.raises(DataFormatError, match=r"short\.tsv:2: expected 19 tab-separated fields, got 4"):
        list(read_inspired(path))
    path = _write_lines(tmp_path / "dict.tsv", [INSPIRED_HEADER, inspired_row("d1", 1, "SEEKER", "x", movie_dict="{oops")])
    with pytest.raises(DataFormatError, match=r"dict\.tsv:2: movie_dict is not a Python dict literal"):
        list(read_inspired(path))
    skipped = SkipCounter()
    assert len(list(read_inspired(tmp_path / "bad.tsv", skip_bad=True, skipped=skipped))) == 1
    assert skipped.count == 1


def test_inspired_repairs_the_known_broken_dict_cell(tmp_path):
    row = inspired_row("d1", 1, "SEEKER", "x", movie_dict="{'Murder Mystery (2019)': 0, 'Office Space (1999): 1}")
    path = _write_lines(tmp_path / "ok.tsv", [INSPIRED_HEADER, row])
    [dialogue] = list(read_inspired(path))
    assert dialogue.meta["movie_dict"] == {"Murder Mystery (2019)": 0, "Office Space (1999)": 1}
