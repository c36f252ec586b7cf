"""The shared SFT loop: response-only labels, overfitting a tiny batch, exact resume after a stop, atomic
checkpoints, Ctrl-C, YAML and CLI configs. All on a 2-layer width-64 Llama."""

from __future__ import annotations

import argparse
import os
import signal

import pytest
import torch

from _tiny_model import single_thread, tiny_model_folder
from helpers import assert_close, backend_device_pairs
from smtpo_fast.cli import add_config_arguments, config_from_args
from smtpo_fast.models import load_model
from smtpo_fast.train import (IGNORE_INDEX, BatchPlan, SFTConfig, SFTTrainer, latest_checkpoint, load_yaml_config,
                              tokenize_example)
from smtpo_fast.train import checkpoint as checkpoint_module

EXAMPLES = [
    {"messages": [{"role": "system", "content": "You are a movie seeker."},
                  {"role": "user", "content": "Have you seen Ghostbusters (1984)?"},
                  {"role": "assistant", "content": "yes, loved it"}]},
    {"messages": [{"role": "user", "content": "What do you like?"},
                  {"role": "assistant", "content": "comedies mostly, like Bridesmaids (2011)"}]},
    {"messages": [{"role": "user", "content": "Try Police Academy (1984)."},
                  {"role": "assistant", "content": "genre: comedy; era: 1980s"}]},
    {"messages": [{"role": "user", "content": "Any animation?"},
                  {"role": "assistant", "content": "How to Train Your Dragon"}]},
]


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


def test_tokenize_example_labels_only_the_response(model_dir):
    _, tok = load_model(model_dir)
    example = tokenize_example(tok, EXAMPLES[0]["messages"], max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)
    first = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert all(l == IGNORE_INDEX for l in labels[:first])
    assert labels[first:] == ids[first:]
    assert tok.decode(ids[first:]) == "yes, loved it<|im_end|>\n"
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    # Truncation keeps the response and drops the start of the prompt.
    short = tokenize_example(tok, EXAMPLES[0]["messages"], max_length=len(ids) - 3)
    assert short["input_ids"] == ids[3:] and short["labels"] == labels[3:]
    with pytest.raises(ValueError, match="messages"):
        tokenize_example(tok, EXAMPLES[0]["messages"][:-1], 512)


def test_batch_plan_is_deterministic_and_covers_every_example(model_dir):
    _, tok = load_model(model_dir)
    examples = [tokenize_example(tok, e["messages"], 512) for e in EXAMPLES * 5]
    plan = BatchPlan(examples, batch_size=3, pad_id=tok.pad_token_id, seed=1, bucket_size=2)
    again = BatchPlan(examples, batch_size=3, pad_id=tok.pad_token_id, seed=1, bucket_size=2)
    n = plan.batches_per_epoch
    assert n == 7
    for k in range(2 * n):
        assert torch.equal(plan.batch(k).input_ids, again.batch(k).input_ids)
    rows = sum(plan.batch(k).input_ids.shape[0] for k in range(n))
    assert rows == len(examples)
    tokens = sum(int(plan.batch(k).attention_mask.sum()) for k in range(n))
    assert tokens == sum(len(e["input_ids"]) for e in examples)
    packed = BatchPlan(examples, batch_size=2, pad_id=tok.pad_token_id, packing=True, max_length=32)
    lengths = [int(m) for k in range(packed.batches_per_epoch) for m in packed.batch(k).attention_mask.sum(1)]
    assert sum(lengths) == tokens and all(n == 32 for n in lengths[:-1]) and 0 < lengths[-1] <= 32


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=8, batch_size=2, grad_accum=2, lr=3e-3,
                warmup_steps=2, log_every=2, progress=False, device="cpu", seed=3)
    base.update(kw)
    return SFTConfig(**base)


def test_overfits_a_tiny_batch(model_dir, tmp_path):
    model, tok = load_model(model_dir)
    cfg = _config(tmp_path, max_steps=60, grad_accum=1, batch_size=4, lr=5e-3, warmup_steps=5)
    result = SFTTrainer(model, tok, EXAMPLES, cfg).train()
    assert not result.interrupted and result.steps == 60
    assert result.losses[0] > 4.0
    assert min(result.losses[-5:]) < 0.3, result.losses[-5:]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    final, _ = load_model(tmp_path / "run" / "final")
    for a, b in zip(final.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_stop_and_resume_reproduces_the_uninterrupted_run(model_dir, tmp_path, lora):
    lora_kw = {"lora_r": 4, "lora_dropout": 0.1, "seed": 0} if lora else {}  # dropout: the RNG state must be restored too
    model, tok = load_model(model_dir, **lora_kw)
    full = SFTTrainer(model, tok, EXAMPLES, _config(tmp_path / "a")).train()

    model_b, _ = load_model(model_dir, **lora_kw)
    first = SFTTrainer(model_b, tok, EXAMPLES, _config(tmp_path / "b")).train(stop_after=3)
    assert first.interrupted and first.steps == 3 and not (tmp_path / "b" / "run" / "final").exists()
    assert first.losses == full.losses[:3]
    torch.manual_seed(12345)  # whatever happens in between must not matter
    fresh, _ = load_model(model_dir, **lora_kw)
    resumed = SFTTrainer(fresh, tok, EXAMPLES, _config(tmp_path / "b")).train()
    assert resumed.steps == 8 and not resumed.interrupted
    assert resumed.losses == full.losses  # exact: same batches, same RNG, same optimizer state
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_write_is_atomic(model_dir, tmp_path, monkeypatch):
    model, tok = load_model(model_dir)
    trainer = SFTTrainer(model, tok, EXAMPLES, _config(tmp_path, max_steps=4, save_every=2))
    trainer.train(stop_after=2)
    root = tmp_path / "run" / "checkpoints"
    good = latest_checkpoint(root)
    assert good.name == "step-0000002"

    real_save = checkpoint_module.save_file

    def crash_on_optimizer(tensors, path, *a, **k):
        if "optimizer" in str(path):
            raise OSError("disk full")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint_module, "save_file", crash_on_optimizer)
    with pytest.raises(OSError, match="disk full"):
        trainer.train(stop_after=1)
    assert latest_checkpoint(root) == good  # the half-written step 3 never became 'latest'
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == ["step-0000002"]
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    model2, _ = load_model(model_dir)
    again = SFTTrainer(model2, tok, EXAMPLES, _config(tmp_path, max_steps=4))
    assert again.resume() and again.step == 2


def test_ctrl_c_saves_and_exits_cleanly(model_dir, tmp_path):
    model, tok = load_model(model_dir)
    trainer = SFTTrainer(model, tok, EXAMPLES, _config(tmp_path, max_steps=50))
    real_batch = trainer.plan.batch

    def batch_with_interrupt(k):
        if k == 4:  # during step 3 (micro-batches 4 and 5)
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(k)

    trainer.plan.batch = batch_with_interrupt
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    result = trainer.train()
    assert result.interrupted and result.steps == 3  # the step in flight completes, then it saves and returns
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-0000003"
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer's handler is removed again


def test_config_from_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nbatch_size: 3\npacking: true\n")
    cfg = load_yaml_config(SFTConfig, path, max_steps=7)
    assert (cfg.lr, cfg.batch_size, cfg.packing, cfg.max_steps) == (0.01, 3, True, 7)
    path.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_yaml_config(SFTConfig, path)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    assert "Peak learning rate" in parser.format_help()
    args = parser.parse_args(["--lr", "0.5", "--no-progress", "--grad-accum", "4"])
    cfg = config_from_args(SFTConfig, args)
    assert (cfg.lr, cfg.progress, cfg.grad_accum) == (0.5, False, 4)


def test_time_budget_shrinks_the_schedule(model_dir, tmp_path):
    model, tok = load_model(model_dir)
    cfg = _config(tmp_path, max_steps=10_000, grad_accum=1, warmup_steps=2, max_minutes=0.03)
    trainer = SFTTrainer(model, tok, EXAMPLES, cfg)
    result = trainer.train()
    assert 2 < result.steps < 10_000 and result.seconds < 0.03 * 60 + 1.0
    assert trainer.total_steps == result.steps or result.out_of_time
    # The cosine reached its floor at the (shrunk) end.
    if not result.out_of_time:
        assert trainer.scheduler.get_last_lr()[0] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_time_budget_uses_the_recent_speed_not_the_start_up(model_dir, tmp_path):
    """A slow start (kernel compilation, caches) must not shrink the schedule to what the start-up speed allows."""
    from types import SimpleNamespace

    model, tok = load_model(model_dir)
    trainer = SFTTrainer(model, tok, EXAMPLES, _config(tmp_path, max_steps=1000, warmup_steps=2, max_minutes=4))
    bar = SimpleNamespace(total=1000)
    trainer.step, trainer.elapsed = 20, 60.0  # 50 s of start-up, then 19 steps of 0.5 s
    trainer.step_seconds.extend([0.5] * 19)
    trainer._fit_schedule_to_budget(240.0, bar)
    assert trainer.total_steps == bar.total == 20 + int(180 / 0.5)  # not 20 * 240 / 60 = 80
    assert trainer.scheduler.lr_lambdas[0].total == 380
    # Faster steps later give the budget's steps back, never more than were configured.
    trainer.step_seconds.extend([0.25] * 20)
    trainer._fit_schedule_to_budget(240.0, bar)
    assert trainer.total_steps == bar.total == trainer.scheduler.lr_lambdas[0].total == 20 + int(180 / 0.25)
    trainer._fit_schedule_to_budget(1e6, bar)
    assert trainer.total_steps == 1000


@pytest.mark.parametrize("backend, device", backend_device_pairs())
def test_sft_loss_matches_float64_cross_entropy(model_dir, backend, device, monkeypatch):
    """The trainer's loss (fused token_logprobs on the shifted, strided logits) on every backend built here,
    against the float64 reference: summed NLL of response tokens only, and the same gradient."""
    from contextlib import nullcontext

    from smtpo_fast.train import collate, sequence_loss

    monkeypatch.setenv("SMTPO_BACKEND", backend)
    model, tok = load_model(model_dir, device=device)
    batch = collate([tokenize_example(tok, e["messages"], 512) for e in EXAMPLES], tok.pad_token_id).to(device)
    nll, n = sequence_loss(model, batch, nullcontext())
    assert n == int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) > 0
    grad = torch.autograd.grad(nll, model.model.norm.weight)[0]

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shifted = logits[:, :-1].double()
    labels = batch.labels[:, 1:]
    reference = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1),
                                                  ignore_index=IGNORE_INDEX, reduction="sum")
    ref_grad = torch.autograd.grad(reference, model.model.norm.weight)[0]
    assert_close(nll, reference, rtol=1e-5, atol=1e-4, what=f"loss {backend}")
    assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5, what=f"grad {backend}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trainer_overfits_on_cuda_with_bf16_autocast(model_dir, tmp_path):
    model, tok = load_model(model_dir)
    cfg = _config(tmp_path, max_steps=60, grad_accum=1, batch_size=4, lr=5e-3, warmup_steps=5, device="cuda",
                  bf16=True)
    trainer = SFTTrainer(model, tok, EXAMPLES, cfg)
    result = trainer.train()
    assert next(trainer.model.parameters()).is_cuda
    assert min(result.losses[-5:]) < 0.5, result.losses[-5:]
    fresh, _ = load_model(model_dir)
    resumed = SFTTrainer(fresh, tok, EXAMPLES, _config(tmp_path / "b", max_steps=8, device="cuda"))
    resumed.train(stop_after=3)
    assert resumed.resume() and resumed.step == 3
