import json

import pytest

from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.paths import data_dir
from smtpo_fast.data.redial import read_redial
from smtpo_fast.data.turns import TurnConfig, build_turn_dataset, dialogue_turns, iter_turns
from tests._data_fixtures import write_data_dir


@pytest.fixture()
def handmade(tmp_path):
    root = write_data_dir(tmp_path)
    return root, load_catalog(root)


def test_turns_of_handmade_dialogue(handmade):
    root, catalog = handmade
    [dialogue] = list(read_redial(root / "redial" / "test_public.jsonl"))
    first, second = dialogue_turns(dialogue, catalog, TurnConfig(merge_consecutive=False))
    assert first["turn_index"] == 3
    assert [c["text"] for c in first["context"]] == ["Hi, what do you like?", "I loved Bridesmaids (2011)",
                                                      "comedies mostly"]
    assert first["feedback"] == "comedies mostly"
    assert first["context_item_ids"] == ["222"]
    assert first["target_ids"] == ["555"] and first["new_target_ids"] == ["555"]
    assert first["target_names"] == ["Ghostbusters (1984)"]
    assert first["liked_ids"] == ["222"] and first["disliked_ids"] == []
    assert "genre:comedy" in first["liked_attributes"]
    assert "director:ivan reitman" in first["target_attributes"]
    assert second["turn_index"] == 5
    assert second["all_target_ids"] == ["222", "444"] and second["target_ids"] == ["222", "444"]
    assert second["new_target_ids"] == ["444"]
    assert second["target_liked"] == [1, 2]
    assert second["context_item_ids"] == ["222", "555"] and second["liked_ids"] == ["222", "555"]
    # @111 (disliked) comes after both turns, so neither context knows it.
    assert all("111" not in t["disliked_ids"] for t in (first, second))


def test_merged_turns_and_new_only(handmade):
    root, catalog = handmade
    [dialogue] = list(read_redial(root / "redial" / "test_public.jsonl"))
    first, second = dialogue_turns(dialogue, catalog, TurnConfig(merge_consecutive=True, new_items_only=True))
    assert first["turn_index"] == 2
    assert first["feedback"] == "I loved Bridesmaids (2011) comedies mostly"
    assert second["target_ids"] == ["444"] and second["all_target_ids"] == ["222", "444"]


def test_inspired_turns_join_catalog(handmade):
    root, catalog = handmade
    turns = list(iter_turns(root / "inspired" / "dev.tsv", catalog))
    assert [(t["dialogue_id"], t["target_ids"]) for t in turns] == [
        ("d1", ["555", "title:Unknown Film (1999)"]), ("d2", ["111"])]
    assert turns[0]["context_item_ids"] == ["222"]
    assert turns[1]["feedback"] == "Any horror?"


def test_turn_dataset_is_cached_by_input_hash(handmade, tmp_path):
    root, catalog = handmade
    path = root / "redial" / "test_public.jsonl"
    cache = tmp_path / "cache"
    ds = build_turn_dataset(path, catalog, cache_dir=cache)
    assert len(ds) == 2 and ds[1]["new_target_ids"] == ["444"]
    assert ds[0]["context"][1] == {"role": "seeker", "text": "I loved Bridesmaids (2011) comedies mostly"}
    entries = list((cache / "turns").iterdir())
    assert len(entries) == 1
    again = build_turn_dataset(path, catalog, cache_dir=cache)
    assert again.cache_files and str(entries[0]) in again.cache_files[0]["filename"]
    # A changed input file gets a new key.
    record = json.loads(path.read_text())
    record["conversationId"] = "43"
    path.write_text(json.dumps(record) + "\n")
    assert build_turn_dataset(path, catalog, cache_dir=cache)[0]["dialogue_id"] == "43"
    assert len(list((cache / "turns").iterdir())) == 2


def test_real_redial_turn_counts():
    root = data_dir(required=False)
    if root is None or not (root / "redial" / "test_public.jsonl").exists():
        pytest.skip("shared data not available")
    catalog = load_catalog(root)
    turns = list(iter_turns(root / "redial" / "test_public.jsonl", catalog, TurnConfig(merge_consecutive=False)))
    evaluated = [t for t in turns if t["new_target_ids"] and t["context"]]
    assert len(evaluated) == 1956
    assert sum(len(t["new_target_ids"]) for t in evaluated) == 2288
