"""Advantages and returns (smtpo_fast/ops/advantages.py) against plain Python loops written from the formulas (the
loops verl and TRL run), in float64, on fresh random inputs with random masks, on every backend built here."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import torch

from smtpo_fast import ops
from smtpo_fast.ops import advantages as advantages_module
from helpers import assert_close, backend_device_pairs

PAIRS = backend_device_pairs()
RTOL = 1e-6  # float32 outputs: every backend accumulates in float64, so only the final rounding differs


def n_cases(backend: str, full: int) -> int:
    # The Triton interpreter runs each program in numpy: fewer (still random) cases keep the suite fast.
    return max(8, full // 8) if backend == "triton" else full


# ----------------------------------------------------------------------------------------------------------------
# Python-loop references (float64 Python floats)
# ----------------------------------------------------------------------------------------------------------------
def grpo_loop(rewards, ids, eps, std, scale):
    """verl's compute_grpo_outcome_advantage (dict of lists per group id), with TRL's batch scaling added."""
    by_group = defaultdict(list)
    for r, g in zip(rewards, ids):
        by_group[g].append(r)
    mean, sd = {}, {}
    ddof = 0 if std == "biased" else 1
    for g, xs in by_group.items():
        if len(xs) == 1:
            mean[g], sd[g] = 0.0, 1.0
        else:
            mu = sum(xs) / len(xs)
            mean[g] = mu
            sd[g] = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - ddof))
    if scale == "batch":
        mu = sum(rewards) / len(rewards)
        bsd = math.sqrt(sum((x - mu) ** 2 for x in rewards) / (len(rewards) - ddof)) if len(rewards) > 1 else 1.0
    out = []
    for r, g in zip(rewards, ids):
        if std is None or scale == "none":
            out.append(r - mean[g])
        elif scale == "group":
            out.append((r - mean[g]) / (sd[g] + eps))
        else:
            out.append((r - mean[g]) / (bsd + eps))
    return out


def rloo_loop(rewards, ids):
    out = []
    for i, (r, g) in enumerate(zip(rewards, ids)):
        others = [x for j, (x, h) in enumerate(zip(rewards, ids)) if h == g and j != i]
        out.append(r - sum(others) / len(others) if others else r)
    return out


def gae_loop(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        next_value, running = 0.0, 0.0
        for t in reversed(range(T)):
            if not mask[b][t]:
                continue  # skipped: the next value and the running advantage carry over
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            next_value = values[b][t]
            adv[b][t] = running
            ret[b][t] = running + values[b][t]
    return adv, ret


def returns_loop(rewards, mask, gamma):
    B, T = len(rewards), len(rewards[0])
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if mask[b][t]:
                running = rewards[b][t] + gamma * running
                ret[b][t] = running
    return ret


def turn_loop(turn_rewards, turn_end, T, gamma_turn):
    out = [[0.0] * T for _ in turn_rewards]
    for b, (rs, ends) in enumerate(zip(turn_rewards, turn_end)):
        valid = [(r, e) for r, e in zip(rs, ends) if e >= 0]
        for k, (_, e) in enumerate(valid):
            out[b][e] = sum(gamma_turn ** (j - k) * valid[j][0] for j in range(k, len(valid)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Random cases
# ----------------------------------------------------------------------------------------------------------------
def random_mask(rng: random.Random, B: int, T: int) -> torch.Tensor:
    """Masks of the kinds RL batches have, plus the edge cases: all masked, one valid token, full rows."""
    rows = []
    for _ in range(B):
        kind = rng.choice(["random", "prefix", "turns", "none", "one", "all"])
        if kind == "random":
            p = rng.random()
            row = [rng.random() < p for _ in range(T)]
        elif kind == "prefix":  # right padding
            n = rng.randint(0, T)
            row = [t < n for t in range(T)]
        elif kind == "turns":  # policy turns with simulator turns between them
            row, on = [], rng.random() < 0.5
            while len(row) < T:
                row += [on] * rng.randint(1, 5)
                on = not on
            row = row[:T]
        elif kind == "none":
            row = [False] * T
        elif kind == "one":
            row = [False] * T
            row[rng.randrange(T)] = True
        else:
            row = [True] * T
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(B, T)


def random_scan_case(rng: random.Random, gen: torch.Generator, max_T: int = 40):
    B = rng.randint(1, 6)
    T = rng.choice([1, 2, rng.randint(1, max_T)])
    mask = random_mask(rng, B, T)
    if rng.random() < 0.5:  # sparse outcome rewards, as in RLHF
        rewards = torch.where(torch.rand(B, T, generator=gen) < 0.2, torch.randn(B, T, generator=gen),
                              torch.zeros(B, T))
    else:
        rewards = torch.randn(B, T, generator=gen)
    values = torch.randn(B, T, generator=gen)
    gamma = rng.choice([0.0, 1.0, rng.random()])
    lam = rng.choice([0.0, 1.0, rng.random()])
    if rng.random() < 0.3:
        mask = mask.float()  # float masks are accepted too
    return rewards, values, mask, gamma, lam


def f32(t):
    """Round to float32 (what the op sees) and back to float64 (what the loop reference sees)."""
    return t.float(), t.float().double()


def to(dev, *ts):
    return [t.to(dev) for t in ts]


# ----------------------------------------------------------------------------------------------------------------
# Scans: GAE and discounted returns
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS)
def test_gae_matches_python_loop(backend, device):
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    for case in range(n_cases(backend, 200)):
        rewards, values, mask, gamma, lam = random_scan_case(rng, gen)
        (r32, r64), (v32, v64) = f32(rewards), f32(values)
        adv, ret = ops.gae(*to(device, r32, v32, mask), gamma=gamma, lam=lam, backend=backend)
        assert adv.dtype == torch.float32 and ret.dtype == torch.float32 and adv.shape == rewards.shape
        ref_adv, ref_ret = gae_loop(r64.tolist(), v64.tolist(), (mask != 0).tolist(), gamma, lam)
        what = f"case {case} gamma={gamma} lam={lam}"
        assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=RTOL, atol=1e-12, what="adv " + what)
        assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64), rtol=RTOL, atol=1e-12, what="ret " + what)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_discounted_returns_matches_python_loop(backend, device):
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    for case in range(n_cases(backend, 200)):
        rewards, _, mask, gamma, _ = random_scan_case(rng, gen)
        r32, r64 = f32(rewards)
        ret = ops.discounted_returns(*to(device, r32, mask), gamma=gamma, backend=backend)
        ref = returns_loop(r64.tolist(), (mask != 0).tolist(), gamma)
        assert_close(ret, torch.tensor(ref, dtype=torch.float64), rtol=RTOL, atol=1e-12, what=f"case {case}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_scans_float64_and_long_rows(backend, device, monkeypatch):
    """float64 in, float64 out; rows longer than one CUDA tile (2048 tokens) or Triton chunk cross the boundaries
    correctly, the state carried over long masked stretches."""
    gen = torch.Generator().manual_seed(3)
    T = 2500
    if backend == "triton" and device == "cpu":  # the interpreter is slow: smaller chunks, shorter rows
        monkeypatch.setattr(advantages_module, "TRITON_SCAN_CHUNK", 64)
        T = 300
    B = 3
    rewards, values = torch.randn(B, T, generator=gen, dtype=torch.float64), torch.randn(B, T, generator=gen,
                                                                                         dtype=torch.float64)
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[1] = False
    mask[2, : T // 2] = False  # a long masked stretch that the state must carry across
    adv, ret = ops.gae(*to(device, rewards, values, mask), gamma=0.999, lam=0.95, backend=backend)
    assert adv.dtype == torch.float64
    ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.999, 0.95)
    assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=1e-9, atol=1e-9, what="adv")
    assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64), rtol=1e-9, atol=1e-9, what="ret")
    ret = ops.discounted_returns(*to(device, rewards, mask), gamma=1.0, backend=backend)
    ref = returns_loop(rewards.tolist(), mask.tolist(), 1.0)
    assert_close(ret, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9, what="returns")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_scans_nan_propagation(backend, device):
    """Documented: a NaN at a valid token poisons that token and the earlier valid tokens of its row only; a NaN
    at a masked token is ignored."""
    rewards = torch.zeros(3, 6)
    values = torch.ones(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    rewards[0, 3] = float("nan")  # valid: tokens 0..3 of row 0 NaN
    mask[1, 2] = False
    rewards[1, 2] = float("nan")  # masked: no effect
    values[1, 2] = float("nan")
    adv, ret = ops.gae(*to(device, rewards, values, mask), gamma=0.9, lam=0.9, backend=backend)
    assert torch.isnan(adv[0, :4]).all() and not torch.isnan(adv[0, 4:]).any()
    assert not torch.isnan(adv[1:]).any() and not torch.isnan(ret[1:]).any()
    ref_adv, _ = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.9, 0.9)
    assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=RTOL, atol=1e-12, what="nan gae")
    ret = ops.discounted_returns(*to(device, rewards, mask), gamma=0.5, backend=backend)
    assert torch.isnan(ret[0, :4]).all() and not torch.isnan(ret[1:]).any()


def test_gae_agrees_with_verl_on_valid_tokens():
    """verl's loop (multiplicative mask blending, no skipping of rewards) gives the same advantages and returns on
    valid tokens; it leaves carried values at masked ones, where ours are 0."""
    gen = torch.Generator().manual_seed(4)
    B, T = 5, 30
    r, v = torch.randn(B, T, generator=gen, dtype=torch.float64), torch.randn(B, T, generator=gen, dtype=torch.float64)
    m = (torch.rand(B, T, generator=gen) < 0.6).double()
    nextvalues, lastgaelam, rev = 0.0, 0.0, []
    for t in reversed(range(T)):
        delta = r[:, t] + 0.99 * nextvalues - v[:, t]
        lastgaelam_ = delta + 0.99 * 0.9 * lastgaelam
        nextvalues = v[:, t] * m[:, t] + (1 - m[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * m[:, t] + (1 - m[:, t]) * lastgaelam
        rev.append(lastgaelam)
    verl_adv = torch.stack(rev[::-1], dim=1)
    adv, ret = ops.gae(r, v, m, gamma=0.99, lam=0.9)
    valid = m.bool()
    assert_close(adv[valid], verl_adv[valid], rtol=1e-12, atol=1e-12, what="verl adv")
    assert_close(ret[valid], (verl_adv + v)[valid], rtol=1e-12, atol=1e-12, what="verl ret")
    assert (adv[~valid] == 0).all() and (ret[~valid] == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# Group advantages: GRPO and RLOO
# ----------------------------------------------------------------------------------------------------------------
def random_group_case(rng: random.Random, gen: torch.Generator):
    n_groups = rng.randint(1, 12)
    sizes = [rng.choice([1, 1, 2, rng.randint(1, 9)]) for _ in range(n_groups)]
    ids = []
    # Arbitrary group ids: a wide span (the CPU kernel hashes them) or a narrow one, negatives included (a table).
    labels = rng.sample(range(-1000, 10**9) if rng.random() < 0.5 else range(-20, 40), n_groups)
    for g, size in zip(labels, sizes):
        ids += [g] * size
    rng.shuffle(ids)
    B = len(ids)
    rewards = torch.randn(B, generator=gen) * rng.choice([1.0, 10.0, 0.01])
    if rng.random() < 0.3:  # binary rewards: many zero-variance groups
        rewards = (torch.rand(B, generator=gen) < rng.random()).float()
    if rng.random() < 0.2:
        g = rng.choice(labels)
        rewards[torch.tensor(ids) == g] = 0.5  # one explicitly constant group
    return rewards, torch.tensor(ids, dtype=torch.int64)


GRPO_FLAGS = [
    dict(eps=1e-6, std="unbiased", scale="group"),  # verl
    dict(eps=1e-6, std=None, scale="group"),  # verl, norm_adv_by_std_in_grpo=False
    dict(eps=1e-4, std="unbiased", scale="batch"),  # TRL scale_rewards="batch"
    dict(eps=1e-4, std="unbiased", scale="none"),  # TRL scale_rewards="none" (Dr. GRPO)
    dict(eps=1e-4, std="biased", scale="group"),
    dict(eps=1e-8, std="biased", scale="batch"),
]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_grpo_matches_python_loop(backend, device):
    rng, gen = random.Random(5), torch.Generator().manual_seed(5)
    for case in range(n_cases(backend, 240)):
        rewards, ids = random_group_case(rng, gen)
        flags = GRPO_FLAGS[case % len(GRPO_FLAGS)]
        r32, r64 = f32(rewards)
        if case % 5 == 0:
            ids = ids.int()  # int32 ids accepted
        out = ops.grpo_advantages(*to(device, r32, ids), backend=backend, **flags)
        assert out.dtype == torch.float32 and out.shape == rewards.shape
        ref = grpo_loop(r64.tolist(), ids.tolist(), **flags)
        # atol: (r - mean) of a zero-variance group is exactly 0 in float64 but divided by eps it can show rounding
        # of the mean (1e-17 / 1e-6); a float32 output of such a group is 0 to within 1e-9.
        assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=f"case {case} {flags}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_rloo_matches_python_loop(backend, device):
    rng, gen = random.Random(6), torch.Generator().manual_seed(6)
    for case in range(n_cases(backend, 160)):
        rewards, ids = random_group_case(rng, gen)
        r32, r64 = f32(rewards)
        out = ops.rloo_advantages(*to(device, r32, ids), backend=backend)
        ref = rloo_loop(r64.tolist(), ids.tolist())
        assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=f"case {case}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_grpo_reproduces_trl(backend, device):
    """TRL's GRPOTrainer formula (consecutive groups of num_generations) for each scale_rewards setting."""
    gen = torch.Generator().manual_seed(7)
    G, n = 16, 8
    rewards = torch.randn(G * n, generator=gen, dtype=torch.float64)
    rewards[:n] = 1.0  # one zero-variance group
    ids = torch.arange(G).repeat_interleave(n)
    mean = rewards.view(-1, n).mean(1).repeat_interleave(n)
    for scale in ("group", "batch", "none"):
        if scale == "batch":
            std = rewards.std().expand_as(rewards)
        else:
            std = rewards.view(-1, n).std(1).repeat_interleave(n)
        trl = rewards - mean
        if scale != "none":
            trl = trl / (std + 1e-4)
        ours = ops.grpo_advantages(*to(device, rewards, ids), eps=1e-4, std="unbiased", scale=scale, backend=backend)
        assert ours.dtype == torch.float64
        assert_close(ours, trl, rtol=1e-12, atol=1e-12, what=f"TRL scale={scale}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_group_ops_edges_and_nan(backend, device):
    # Empty batch, a batch of one (group of one and batch of one), NaN propagation within a group only.
    empty = ops.grpo_advantages(*to(device, torch.zeros(0), torch.zeros(0, dtype=torch.int64)), backend=backend)
    assert empty.shape == (0,)
    one = ops.grpo_advantages(*to(device, torch.tensor([3.0]), torch.tensor([7])), backend=backend)
    assert_close(one, torch.tensor([3.0 / (1 + 1e-6)]), rtol=RTOL, atol=0, what="group of one")
    one = ops.grpo_advantages(*to(device, torch.tensor([3.0]), torch.tensor([7])), scale="batch", backend=backend)
    assert_close(one, torch.tensor([3.0 / (1 + 1e-6)]), rtol=RTOL, atol=0, what="batch of one")
    assert ops.rloo_advantages(*to(device, torch.tensor([3.0]), torch.tensor([7])), backend=backend).item() == 3.0
    rewards = torch.tensor([1.0, float("nan"), 2.0, 0.0, 4.0])
    ids = torch.tensor([0, 0, 1, 1, 0])
    for fn in (ops.grpo_advantages, ops.rloo_advantages):
        out = fn(*to(device, rewards, ids), backend=backend).cpu()
        assert torch.isnan(out[[0, 1, 4]]).all() and torch.isfinite(out[[2, 3]]).all()


# ----------------------------------------------------------------------------------------------------------------
# Turn rewards
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS)
def test_turn_rewards_to_tokens_matches_python_loop(backend, device):
    rng, gen = random.Random(8), torch.Generator().manual_seed(8)
    for case in range(n_cases(backend, 160)):
        B, K = rng.randint(1, 5), rng.randint(1, 6)
        T = rng.randint(K, 40)
        ends = []
        for _ in range(B):
            n_valid = rng.randint(0, K)
            valid = sorted(rng.sample(range(T), n_valid))
            row = valid + [-1] * (K - n_valid)
            if rng.random() < 0.5:  # padding turns anywhere, valid ones still in order
                slots = sorted(rng.sample(range(K), n_valid))
                row = [-1] * K
                for s, e in zip(slots, valid):
                    row[s] = e
            ends.append(row)
        turn_end = torch.tensor(ends, dtype=torch.int64)
        r32, r64 = f32(torch.randn(B, K, generator=gen))
        gamma = rng.choice([0.0, 1.0, rng.random()])
        out = ops.turn_rewards_to_tokens(*to(device, r32, turn_end), T, gamma_turn=gamma, backend=backend)
        assert out.shape == (B, T) and out.dtype == torch.float32
        ref = turn_loop(r64.tolist(), ends, T, gamma)
        assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=RTOL, atol=1e-12, what=f"case {case}")


# ----------------------------------------------------------------------------------------------------------------
# masked_mean / masked_whiten (plain torch on every device)
# ----------------------------------------------------------------------------------------------------------------
def test_masked_mean_and_whiten_match_python_loop():
    rng, gen = random.Random(9), torch.Generator().manual_seed(9)
    for case in range(150):
        B, T = rng.randint(1, 5), rng.choice([1, rng.randint(1, 20)])
        x32, x64 = f32(torch.randn(B, T, generator=gen) * 3 + 1)
        mask = random_mask(rng, B, T)
        if case % 7 == 0:
            x32 = x32.masked_fill(~mask, float("nan"))  # masked NaNs must not leak in
        rows, flat_m = x64.tolist(), mask.tolist()
        vals = [rows[b][t] for b in range(B) for t in range(T) if flat_m[b][t]]
        mean_all = sum(vals) / len(vals) if vals else 0.0
        assert_close(ops.masked_mean(x32, mask), torch.tensor(mean_all, dtype=torch.float64), rtol=RTOL, atol=1e-12,
                     what=f"mean all {case}")
        per_row = [sum(rows[b][t] for t in range(T) if flat_m[b][t]) / max(1, sum(flat_m[b])) for b in range(B)]
        assert_close(ops.masked_mean(x32, mask.float(), dim=-1), torch.tensor(per_row, dtype=torch.float64),
                     rtol=RTOL, atol=1e-12, what=f"mean rows {case}")
        var = sum((v - mean_all) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        shift = case % 2 == 0
        ref = [[((rows[b][t] - mean_all) / math.sqrt(var + 1e-8) + (0 if shift else mean_all)) if flat_m[b][t] else 0.0
                for t in range(T)] for b in range(B)]
        out = ops.masked_whiten(x32, mask, shift_mean=shift)
        assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=f"whiten {case}")


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear Python errors naming the argument
# ----------------------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    r, v = torch.zeros(2, 3), torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="values"):
        ops.gae(r, torch.zeros(2, 4), m, gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="mask"):
        ops.gae(r, v, torch.ones(3, 2, dtype=torch.bool), gamma=1.0, lam=1.0)
    with pytest.raises(TypeError, match="mask"):
        ops.gae(r, v, torch.ones(2, 3, dtype=torch.int64), gamma=1.0, lam=1.0)
    with pytest.raises(TypeError, match="rewards"):
        ops.gae(r.long(), v, m, gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="rewards"):
        ops.gae(torch.zeros(6), torch.zeros(6), torch.ones(6, dtype=torch.bool), gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="gamma"):
        ops.gae(r, v, m, gamma=1.5, lam=1.0)
    with pytest.raises(ValueError, match="lam"):
        ops.gae(r, v, m, gamma=1.0, lam=float("nan"))
    with pytest.raises(TypeError, match="gamma"):
        ops.discounted_returns(r, m, gamma="x")
    with pytest.raises(TypeError, match="mask"):
        ops.discounted_returns(r, torch.ones(2, 3, dtype=torch.int32), gamma=1.0)
    with pytest.raises(ValueError, match="group_ids"):
        ops.grpo_advantages(torch.zeros(4), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="group_ids"):
        ops.grpo_advantages(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="std"):
        ops.grpo_advantages(torch.zeros(4), torch.zeros(4, dtype=torch.int64), std="population")
    with pytest.raises(ValueError, match="scale"):
        ops.grpo_advantages(torch.zeros(4), torch.zeros(4, dtype=torch.int64), scale="global")
    with pytest.raises(TypeError, match="rewards"):
        ops.rloo_advantages([1.0, 2.0], torch.zeros(2, dtype=torch.int64))
    tr = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="turn_end"):
        ops.turn_rewards_to_tokens(tr, torch.tensor([[0, 5], [1, -1]]), 5)  # 5 out of range
    with pytest.raises(ValueError, match="turn_end"):
        ops.turn_rewards_to_tokens(tr, torch.tensor([[3, 1], [1, -1]]), 5)  # not increasing
    with pytest.raises(ValueError, match="turn_end"):
        ops.turn_rewards_to_tokens(tr, torch.tensor([[2, -1], [-1, 2]]).T.contiguous()[:1], 5)
    with pytest.raises(ValueError, match="T"):
        ops.turn_rewards_to_tokens(tr, torch.tensor([[0, 1], [1, -1]]), -1)
    with pytest.raises(ValueError, match="gamma_turn"):
        ops.turn_rewards_to_tokens(tr, torch.tensor([[0, 1], [1, -1]]), 3, gamma_turn=2.0)
    with pytest.raises(ValueError, match="mask"):
        ops.masked_mean(torch.zeros(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend"):
        ops.gae(r, v, m, gamma=1.0, lam=1.0, backend="fortran")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_low_precision_and_noncontiguous_inputs(backend, device):
    gen = torch.Generator().manual_seed(10)
    base = torch.randn(4, 20, generator=gen)
    rewards = base.bfloat16()[:, ::2]  # non-contiguous bfloat16
    values = torch.randn(4, 10, generator=gen).half()
    mask = torch.rand(4, 10, generator=gen) < 0.5
    adv, ret = ops.gae(*to(device, rewards, values, mask), gamma=0.9, lam=0.7, backend=backend)
    assert adv.dtype == torch.float32
    ref_adv, ref_ret = gae_loop(rewards.double().tolist(), values.double().tolist(), mask.tolist(), 0.9, 0.7)
    assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=RTOL, atol=1e-12, what="bf16 adv")
