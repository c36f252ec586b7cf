"""PPO policy loss and KL penalties (smtpo_fast/ops/policy_loss.py) against per-token Python loops written from verl's
formulas, in float64, on every backend built here; gradcheck of the fused backward on each backend."""

from __future__ import annotations

import math
import random

import pytest
import torch

from smtpo_fast import ops
from smtpo_fast.ops.policy_loss import kl_penalty_reference, ppo_policy_loss_reference
from helpers import assert_close, backend_device_pairs
from test_advantages import f32, n_cases, random_mask, to

PAIRS = backend_device_pairs()
RTOL = 1e-6
AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def ppo_loop(logp, old, adv, mask, clip_low, clip_high, dual_clip, agg):
    """verl's compute_policy_loss + agg_loss, one token at a time; seq-modes average over non-empty rows."""
    row_sums, row_counts = [], []
    n = clipped = dual_n = 0
    kl = 0.0
    for b in range(len(logp)):
        s, c = 0.0, 0
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            d = min(max(logp[b][t] - old[b][t], -20.0), 20.0)
            ratio = math.exp(d)
            a = adv[b][t]
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss = max(l1, l2)
            clipped += l2 > l1
            if dual_clip is not None and a < 0:
                l3 = -a * dual_clip
                dual_n += loss > l3
                loss = min(loss, l3)
            s += loss
            c += 1
            kl += -d
        row_sums.append(s)
        row_counts.append(c)
        n += c
    rows = [i for i, c in enumerate(row_counts) if c > 0]
    if agg == "token-mean":
        loss = sum(row_sums) / max(n, 1)
    elif agg == "seq-mean-token-sum":
        loss = sum(row_sums[i] for i in rows) / max(len(rows), 1)
    else:
        loss = sum(row_sums[i] / row_counts[i] for i in rows) / max(len(rows), 1)
    return loss, {"clip_frac": clipped / max(n, 1), "approx_kl": kl / max(n, 1), "dual_clip_frac": dual_n / max(n, 1)}


def random_ppo_case(rng: random.Random, gen: torch.Generator):
    B, T = rng.randint(1, 5), rng.choice([1, 2, rng.randint(1, 30)])
    old = -torch.rand(B, T, generator=gen) * 5
    spread = rng.choice([0.05, 0.3, 1.0])
    logp = old + torch.randn(B, T, generator=gen) * spread
    if rng.random() < 0.1:
        logp[0, 0] = old[0, 0] + 25.0  # beyond verl's log-ratio clamp
    adv = torch.randn(B, T, generator=gen)
    if rng.random() < 0.3:
        adv = adv.sign()  # GRPO-like token advantages
    mask = random_mask(rng, B, T)
    clip_low = rng.choice([0.2, 0.1, rng.random() * 0.5])
    clip_high = rng.choice([0.2, 0.28, rng.random() * 0.5])
    dual = rng.choice([None, 3.0, 1.5])
    agg = rng.choice(AGGS)
    return logp, old, adv, mask, clip_low, clip_high, dual, agg


@pytest.mark.parametrize("backend,device", PAIRS)
def test_ppo_loss_matches_python_loop(backend, device):
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    for case in range(n_cases(backend, 200)):
        logp, old, adv, mask, cl, ch, dual, agg = random_ppo_case(rng, gen)
        (lp32, lp64), (old32, old64), (adv32, adv64) = f32(logp), f32(old), f32(adv)
        loss, stats = ops.ppo_policy_loss(*to(device, lp32, old32, adv32, mask), clip_low=cl, clip_high=ch,
                                          dual_clip=dual, agg=agg, backend=backend)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        ref_loss, ref_stats = ppo_loop(lp64.tolist(), old64.tolist(), adv64.tolist(), mask.tolist(), cl, ch, dual, agg)
        what = f"case {case} {agg} clip=({cl:.3f},{ch:.3f}) dual={dual}"
        assert_close(loss, torch.tensor(ref_loss, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=what)
        for k, v in ref_stats.items():
            assert_close(stats[k], torch.tensor(v, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=f"{k} {what}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_ppo_loss_gradient_matches_autograd_reference(backend, device):
    """The fused backward equals autograd through the plain-torch definition (float64 in, float64 gradients)."""
    rng, gen = random.Random(12), torch.Generator().manual_seed(12)
    for case in range(n_cases(backend, 120)):
        logp, old, adv, mask, cl, ch, dual, agg = random_ppo_case(rng, gen)
        logp, old, adv = logp.double(), old.double(), adv.double()
        x = logp.clone().to(device).requires_grad_(True)
        loss, _ = ops.ppo_policy_loss(x, *to(device, old, adv, mask), clip_low=cl, clip_high=ch, dual_clip=dual,
                                      agg=agg, backend=backend)
        (g,) = torch.autograd.grad(loss * 1.7, x)
        xr = logp.clone().requires_grad_(True)
        ref_loss, _ = ppo_policy_loss_reference(xr, old, adv, mask, cl, ch, dual, agg)
        (gr,) = torch.autograd.grad(ref_loss * 1.7, xr)
        assert g.dtype == torch.float64
        assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12, what=f"loss case {case}")
        assert_close(g, gr, rtol=1e-9, atol=1e-12, what=f"grad case {case} {agg} dual={dual}")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("agg", AGGS)
def test_ppo_loss_gradcheck(backend, device, agg):
    gen = torch.Generator().manual_seed(13)
    B, T = 3, 7
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    logp = (old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.4).to(device).requires_grad_(True)
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[2] = False  # an empty row
    old, adv, mask = to(device, old, adv, mask)

    def fn(x):
        return ops.ppo_policy_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg,
                                   backend=backend)[0]

    assert torch.autograd.gradcheck(fn, (logp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_ppo_loss_edges(backend, device):
    # No valid token: loss 0, gradient 0. bfloat16 logp: gradient comes back in bfloat16.
    logp = torch.zeros(2, 3, device=device, requires_grad=True)
    z, one = torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device)
    loss, stats = ops.ppo_policy_loss(logp, z, one, torch.zeros(2, 3, dtype=torch.bool, device=device),
                                      backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and stats["clip_frac"].item() == 0.0 and (logp.grad == 0).all()
    lp = torch.randn(2, 4, device=device).bfloat16().requires_grad_(True)
    z, one = torch.zeros(2, 4, device=device), torch.ones(2, 4, device=device)
    loss, _ = ops.ppo_policy_loss(lp, z, torch.randn(2, 4, device=device), one, backend=backend)
    loss.backward()
    assert lp.grad.dtype == torch.bfloat16 and torch.isfinite(lp.grad.float()).all()
    # NaN in a valid token propagates to the loss; in a masked one it does not.
    lp = torch.zeros(1, 3, device=device)
    lp[0, 1] = float("nan")
    z, one = torch.zeros(1, 3, device=device), torch.ones(1, 3, device=device)
    m = torch.tensor([[True, False, True]], device=device)
    assert torch.isfinite(ops.ppo_policy_loss(lp, z, one, m, backend=backend)[0])
    assert torch.isnan(ops.ppo_policy_loss(lp, z, one, ~m, backend=backend)[0])


def test_ppo_loss_bad_input():
    z = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="old_logp"):
        ops.ppo_policy_loss(z, torch.zeros(2, 4), z, m)
    with pytest.raises(ValueError, match="advantages"):
        ops.ppo_policy_loss(z, z, torch.zeros(3, 2), m)
    with pytest.raises(TypeError, match="mask"):
        ops.ppo_policy_loss(z, z, z, m.long())
    with pytest.raises(ValueError, match="agg"):
        ops.ppo_policy_loss(z, z, z, m, agg="sum")
    with pytest.raises(ValueError, match="dual_clip"):
        ops.ppo_policy_loss(z, z, z, m, dual_clip=0.5)
    with pytest.raises(ValueError, match="clip_low"):
        ops.ppo_policy_loss(z, z, z, m, clip_low=-0.1)
    with pytest.raises(TypeError, match="logp"):
        ops.ppo_policy_loss(z.long(), z, z, m)
    with pytest.raises(ValueError, match="kind"):
        ops.kl_penalty(z, z, kind="k4")
    with pytest.raises(ValueError, match="ref_logp"):
        ops.kl_penalty(z, torch.zeros(3))


def kl_loop(lp, ref, kind):
    d = lp - ref
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    k = min(max(ref - lp, -20.0), 20.0)
    return min(max(math.exp(k) - k - 1.0, -10.0), 10.0)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_kl_penalty_matches_python_loop(backend, device):
    rng, gen = random.Random(14), torch.Generator().manual_seed(14)
    for case in range(n_cases(backend, 150)):
        kind = ("k1", "k2", "k3")[case % 3]
        shape = rng.choice([(rng.randint(1, 40),), (rng.randint(1, 4), rng.randint(1, 12))])
        ref = -torch.rand(shape, generator=gen) * 5
        lp = ref + torch.randn(shape, generator=gen) * rng.choice([0.1, 1.0, 30.0])  # 30: beyond the clamps
        (lp32, lp64), (ref32, ref64) = f32(lp), f32(ref)
        x = lp32.to(device).requires_grad_(True)
        out = ops.kl_penalty(x, ref32.to(device), kind=kind, backend=backend)
        assert out.dtype == torch.float32 and out.shape == lp.shape
        expected = [kl_loop(a, b, kind) for a, b in zip(lp64.flatten().tolist(), ref64.flatten().tolist())]
        what = f"{kind} case {case}"
        assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=RTOL, atol=1e-9, what=what)
        # Gradient against autograd through the plain-torch definition, in float64.
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        (g,) = torch.autograd.grad((out.double() * w.to(device)).sum(), x)
        xr = lp64.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad((kl_penalty_reference(xr, ref64, kind) * w).sum(), xr)
        assert_close(g, gr, rtol=RTOL, atol=1e-9, what="grad " + what)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_gradcheck(backend, device, kind):
    gen = torch.Generator().manual_seed(15)
    x = (torch.randn(2, 5, generator=gen, dtype=torch.float64) * 0.5).to(device).requires_grad_(True)
    ref = (torch.randn(2, 5, generator=gen, dtype=torch.float64) * 0.5).to(device)
    assert torch.autograd.gradcheck(lambda t: ops.kl_penalty(t, ref, kind=kind, backend=backend), (x,))
    # NaN propagates elementwise.
    lp = torch.zeros(3, device=device)
    lp[1] = float("nan")
    out = ops.kl_penalty(lp, torch.zeros(3, device=device), kind=kind, backend=backend).cpu()
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
