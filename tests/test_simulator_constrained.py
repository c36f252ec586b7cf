"""Catalog-constrained target prediction (`TitleTrie`) on the tiny model, and the config flags' override rule."""

from __future__ import annotations

import argparse

import pytest

from _data_fixtures import write_data_dir
from _tiny_model import single_thread, tiny_model_folder
from smtpo_fast.cli import add_config_arguments, given_flags
from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.models import load_model
from smtpo_fast.simulator import LABEL_FREE, UserSimulator
from smtpo_fast.simulator.constrained import TitleTrie
from smtpo_fast.simulator.tasks import display_name
from smtpo_fast.train import SFTConfig

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    catalog = load_catalog(write_data_dir(tmp_path_factory.mktemp("data")))
    model, tok = load_model(tiny_model_folder(tmp_path_factory.mktemp("tiny")))
    return catalog, model, tok


def _walks(trie, tokenizer):
    """Every path from the root to an end token, decoded."""
    out, stack = [], [[]]
    while stack:
        prefix = stack.pop()
        for token in trie.allowed(prefix):
            if token == trie.end:
                out.append(tokenizer.decode(prefix))
            else:
                stack.append(prefix + [token])
    return out


def test_trie_spells_exactly_the_catalog_titles(setup):
    catalog, _, tok = setup
    trie = TitleTrie.for_catalog(tok, catalog)
    names = sorted(display_name(i, catalog) for i in catalog.ids)
    assert sorted(_walks(trie, tok)) == names and trie.size == len(names) == 6
    assert trie.depth == max(len(tok(n, add_special_tokens=False)["input_ids"]) for n in names) + 1
    ghost = tok("Ghostbusters (1984)", add_special_tokens=False)["input_ids"]
    assert trie.allowed(ghost) == [tok.eos_token_id]                      # a whole title: only the end
    assert trie.allowed(ghost[:-1]) == [ghost[-1]]                        # inside it: its next token
    assert trie.allowed(ghost + [tok.eos_token_id, 5]) == [trie.end]      # after the end (padding)
    assert trie.allowed([tok.eos_token_id]) == [trie.end]                 # off the tree
    with pytest.raises(ValueError, match="names"):
        TitleTrie(tok, ["", "  "], tok.eos_token_id)
    with pytest.raises(ValueError, match="end_token_id"):
        TitleTrie(tok, ["Ghostbusters (1984)"], None)


def test_constrained_beams_are_distinct_catalog_items(setup):
    """An untrained model's beams spell catalog titles only: k distinct items, best first."""
    catalog, model, tok = setup
    sim = UserSimulator(model, tok, catalog, mode=LABEL_FREE)
    history = [[{"role": "seeker", "text": "I loved Bridesmaids (2011), comedies mostly."},
                {"role": "recommender", "text": "Have you seen Ghostbusters (1984)?"}],
               [{"role": "seeker", "text": "Something for kids?"}]]
    ranked = sim.predict_targets(history, k=4)
    assert [len(r) for r in ranked] == [4, 4]
    assert all(len(set(r)) == 4 and set(r) <= set(catalog.ids) for r in ranked)
    free = sim.predict_targets(history, k=4, constrained=False)  # the random model's free beams name no title
    assert all(len(r) < 4 for r in free)


def test_typed_flags_override_the_recipe_even_at_their_default():
    """`--epochs 1 --max-minutes 0` must override a recipe's `epochs: 3, max_minutes: 4` (both typed values equal
    SFTConfig's defaults; comparing with the default once dropped them)."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig, skip=("output_dir",))
    args = parser.parse_args(["--epochs", "1", "--max-minutes", "0", "--no-progress", "--lr", "0.002"])
    assert given_flags(args, SFTConfig) == {"epochs": 1.0, "max_minutes": 0.0, "progress": False, "lr": 0.002}
    assert given_flags(parser.parse_args([]), SFTConfig) == {}
    recipe = {"epochs": 3.0, "max_minutes": 4.0, "batch_size": 16}
    assert {**recipe, **given_flags(args, SFTConfig)} == {"epochs": 1.0, "max_minutes": 0.0, "batch_size": 16,
                                                          "progress": False, "lr": 0.002}
