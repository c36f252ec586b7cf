"""Multi-turn GRPO: the episode loop with a scripted simulator and scripted answers (exact), one RL step on a tiny
Llama changes the policy and logs finite values, and a stopped run resumes to the uninterrupted result."""

import math
import random

import pytest
import torch

from _tiny_model import TEST_SHAPE, single_thread
from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.synth import SynthConfig, generate
from smtpo_fast.data.turns import iter_turns
from smtpo_fast.models import build_tiny, corpus_texts, load_model
from smtpo_fast.recommender import PromptConfig, RewardConfig, reasoning_examples
from smtpo_fast.recommender.generation import Sample
from smtpo_fast.recommender.prompt import INSTRUCTION, SYSTEM
from smtpo_fast.recommender.rl import GRPOTrainer, RLConfig, run_episodes, token_advantages
from smtpo_fast.simulator import Feedback
from smtpo_fast.train import SFTConfig, SFTTrainer

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    generate(root / "data", SynthConfig(n_movies=40, n_directors=8, n_actors=16, n_dialogues=24, seed=3))
    catalog = load_catalog(root / "data")
    turns = [t for t in iter_turns(root / "data" / "redial" / "train_sample.jsonl", catalog)
             if t["context"] and t["new_target_ids"]]
    texts = corpus_texts([root / "data" / "redial" / "train_sample.jsonl"], catalog, [SYSTEM, INSTRUCTION])
    model_dir = build_tiny(root / "tiny", texts, TEST_SHAPE)
    # A short reasoning SFT so sampled answers differ in reward (an untrained model scores 0 on all of them,
    # which gives zero advantages and nothing to learn from).
    examples = reasoning_examples(turns, catalog, popular_candidates(catalog), PromptConfig(num_candidates=5))
    model, tokenizer = load_model(model_dir)
    SFTTrainer(model, tokenizer, examples, SFTConfig(output_dir=str(root / "sft"), max_steps=100, batch_size=8,
                                                     lr=1e-2, warmup_steps=5, max_length=500, progress=False,
                                                     device="cpu")).train()
    return {"root": root, "catalog": catalog, "turns": turns, "model_dir": root / "sft" / "final"}


class ScriptedSimulator:
    """Rejects everything and says it likes one fixed attribute; records what it was shown."""

    def __init__(self):
        self.calls = []

    def respond_batch(self, dialogues, recommended_lists, target_lists=None):
        self.calls.append((dialogues, recommended_lists))
        return [Feedback("Not for me, something else?", False, ["genre:comedy"], ["genre:horror"])
                for _ in dialogues]


def popular_candidates(catalog):
    ids = list(catalog.ids)
    return lambda queries: [[i for i in ids if i not in q["context_item_ids"]][:5] for q in queries]


def test_episode_loop_with_scripted_simulator(world):
    catalog, turn = world["catalog"], world["turns"][0]
    target = turn["new_target_ids"][0]
    seen_prompts = []

    def sample_fn(prompts, g):
        # Turn 0: the target second in every answer; turn 1: first. The candidates line the prompt shows are
        # numbered, so find the target's number there.
        seen_prompts.append(prompts)
        out = []
        for p in prompts:
            lines = [l for l in p[1]["content"].splitlines() if l.startswith("[")]
            number = next(k for k, l in enumerate(lines, 1) if catalog[target].title in l)
            other = 1 if number != 1 else 2
            order = [other, number] if len(seen_prompts) == 1 else [number, other]
            out.append([Sample([1], [2], f"Ranking: x\nTop-10: {order[0]}, {order[1]}") for _ in range(g)])
        return out

    sim = ScriptedSimulator()
    cfg = RLConfig(max_turns=3, group_size=2)
    queries = []

    def candidate_fn(batch):  # records what the retriever is asked
        queries.extend(batch)
        return popular_candidates(catalog)(batch)
    groups, states = run_episodes([turn], sample_fn, candidate_fn, sim, catalog, random.Random(0),
                                  cfg, PromptConfig(num_candidates=5), RewardConfig())
    # Every turn's query names the episode's training dialogue, which a held-out retriever scores out of fold.
    assert len(queries) == 2 and all(q["dialogue_id"] == turn["dialogue_id"] for q in queries)
    assert [g.turn for g in groups] == [0, 1]  # stopped once the target was ranked first
    assert len(sim.calls) == 1 and len(sim.calls[0][1][0]) == 2
    assert all(r["recommendation"] == 0.5 for r in groups[0].rewards)
    assert all(r["recommendation"] == 1.0 for r in groups[1].rewards)
    # The simulator's reply is in the second turn's prompt, and its liked attribute entered the state.
    assert "Not for me" in seen_prompts[1][0][1]["content"]
    assert states[0].liked == {"genre:comedy"} and states[0].done
    # Items recommended at turn 0 are no longer candidates at turn 1 (except the target, kept for training).
    assert groups[0].ranked_ids[0][0] not in groups[1].candidates


def test_token_advantages_group_normalised_per_turn(world):
    from smtpo_fast.recommender.rl import TurnGroup

    rewards = [{"total": 1.0}, {"total": 0.0}], [{"total": 0.5}, {"total": 0.5}]
    groups = [TurnGroup(0, k, [Sample([1], [2, 3], "")] * 2, r, [], []) for k, r in enumerate(rewards)]
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    adv = token_advantages(groups, mask)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (1 - mean 0.5) / unbiased std of [1, 0]
    expected = torch.tensor([[0, a, a, 0], [0, -a, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-5)


def _trainer(world, out, steps, seed=0):
    model, tokenizer = load_model(world["model_dir"])
    cfg = RLConfig(output_dir=str(out), steps=steps, episodes_per_step=2, group_size=4, max_turns=2,
                   max_new_tokens=80, max_prompt_tokens=400, lr=1e-3, temperature=0.7, micro_batch=4, save_every=1,
                   seed=seed, progress=False, device="cpu")
    return GRPOTrainer(model, tokenizer, world["turns"], popular_candidates(world["catalog"]), ScriptedSimulator(),
                       world["catalog"], cfg, PromptConfig(num_candidates=5), RewardConfig())


def test_one_rl_step_changes_policy_and_logs_finite_values(world, tmp_path):
    trainer = _trainer(world, tmp_path / "run", steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train()
    assert len(metrics) == 1
    record = metrics[0]
    for key in ("reward/format", "reward/recommendation", "reward/preference", "reward/total", "kl", "clip_frac",
                "entropy", "response_length", "time/rollout", "time/simulator", "time/logprob", "time/update"):
        assert key in record and math.isfinite(record[key]), key
    assert record["entropy"] > 0 and record["response_length"] > 0 and record["reward/format"] > 0
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    assert changed > 0
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "curves.png").exists()
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_rl_resume_matches_uninterrupted(world, tmp_path):
    full = _trainer(world, tmp_path / "full", steps=2)
    full_metrics = full.train()
    stopped = _trainer(world, tmp_path / "split", steps=2)
    assert len(stopped.train(stop_after=1)) == 1
    resumed = _trainer(world, tmp_path / "split", steps=2)
    resumed_metrics = resumed.train()
    assert [m["step"] for m in resumed_metrics] == [1, 2]
    for a, b in zip(full_metrics, resumed_metrics):
        assert a["reward/total"] == b["reward/total"] and a["response_length"] == b["response_length"]
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def _prompts(world, n=3):
    from smtpo_fast.recommender.prompt import build_prompt

    cands = popular_candidates(world["catalog"])
    return [build_prompt(t["context"], cands([t])[0], world["catalog"], PromptConfig(num_candidates=5))
            for t in world["turns"][:n]]


def test_engine_greedy_answers_equal_hf_generate(world):
    from smtpo_fast.recommender.generation import engine_supports, generate_answers

    model, tokenizer = load_model(world["model_dir"])
    assert engine_supports(model)
    prompts = _prompts(world)
    hf = generate_answers(model, tokenizer, prompts, 1, 60, 0.0, batch_size=2, backend="hf")
    engine = generate_answers(model, tokenizer, prompts, 1, 60, 0.0, batch_size=2, backend="engine")
    assert [[s.response_ids for s in g] for g in engine] == [[s.response_ids for s in g] for g in hf]
    assert [g[0].prompt_ids for g in engine] == [g[0].prompt_ids for g in hf]
    assert all(g[0].text for g in engine)
    # G greedy forks of one prefill are G copies of the single greedy answer
    forked = generate_answers(model, tokenizer, prompts, 3, 60, 0.0, batch_size=6, backend="engine")
    assert [[s.response_ids for s in g] for g in forked] == [[s.response_ids[:]] * 3 for g in hf for s in g]


def test_engine_samples_come_from_the_policy_distribution(world):
    """Sampled answers of G forks: the engine's per-token log-probs (temperature 1, no truncation) equal the
    policy's teacher-forced log-probs that RL trains on, and forks of one prompt differ."""
    from smtpo_fast.recommender.generation import chat_prompt_ids, pack_samples, sequence_logprobs
    from smtpo_fast.rollout import RolloutEngine

    torch.manual_seed(0)
    model, tokenizer = load_model(world["model_dir"])
    prompt = chat_prompt_ids(tokenizer, _prompts(world, 1)[0], 400)
    engine = RolloutEngine(model, tokenizer, max_batch=5, max_seq_len=len(prompt) + 41)
    conv = engine.fork(engine.start([prompt]), 4)
    out = engine.generate(conv, max_new_tokens=40, do_sample=True, temperature=1.0,
                          eos_token_id=tokenizer.eos_token_id)
    responses = out.token_lists()
    assert len({tuple(r) for r in responses}) > 1
    samples = [Sample(prompt, r, "") for r in responses]
    ids, attention, labels = pack_samples(samples, tokenizer.pad_token_id)
    logp, mask, _ = sequence_logprobs(model, ids, attention, labels)
    for row, r in enumerate(responses):
        expected = logp[row][mask[row]]
        torch.testing.assert_close(out.ref_logprobs[row, :len(r)], expected, rtol=1e-3, atol=1e-3)


def test_engine_behaviour_logprobs_match_a_policy_forward(world):
    """The RL step takes PPO's behaviour log-probs from the engine: they equal a teacher-forced forward."""
    from smtpo_fast.recommender.generation import (generate_answers, pack_samples, packed_behaviour_logprobs,
                                                   sequence_logprobs)

    torch.manual_seed(1)
    model, tokenizer = load_model(world["model_dir"])
    samples = [s for g in generate_answers(model, tokenizer, _prompts(world), 2, 40, 1.0, batch_size=4) for s in g]
    ids, attention, labels = pack_samples(samples, tokenizer.pad_token_id)
    logp, mask, _ = sequence_logprobs(model, ids, attention, labels)
    behaviour = packed_behaviour_logprobs(samples, ids.shape[1])
    torch.testing.assert_close(behaviour[mask], logp[mask], rtol=1e-3, atol=1e-3)
    assert bool((behaviour[~mask] == 0).all())


def test_require_target_in_candidates_keeps_only_retrieved_targets(world, tmp_path):
    model, tokenizer = load_model(world["model_dir"])
    cands = popular_candidates(world["catalog"])
    cfg = RLConfig(output_dir=str(tmp_path), require_target_in_candidates=True, ensure_target_in_candidates=False,
                   progress=False, device="cpu")
    trainer = GRPOTrainer(model, tokenizer, world["turns"], cands, ScriptedSimulator(), world["catalog"], cfg,
                          PromptConfig(num_candidates=5), RewardConfig())
    assert 0 < len(trainer.turns) < len(world["turns"])
    assert all(t["new_target_ids"][0] in cands([t])[0] for t in trainer.turns)
