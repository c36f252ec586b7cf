"""sample against its torch reference on every backend built here: truncation masks, log-probs, distribution
(chi-square), seeded reproducibility, bad input."""

import math

import pytest
import torch

from smtpo_fast import _ext
from smtpo_fast.ops import sample, sampling_logprobs_reference, sampling_mask_reference
from smtpo_fast.ops.sampling import sample_with_cutoff
from helpers import assert_close, backend_device_pairs

PAIRS = backend_device_pairs()
CONFIGS = [
    dict(),
    dict(top_k=7),
    dict(top_k=1),
    dict(top_p=0.6),
    dict(min_p=0.15),
    dict(top_k=40, top_p=0.9, min_p=0.02),
    dict(top_p=0.999),
]


# The Triton interpreter runs each row as a Python program (~0.1-0.5 s per row with the bisections), so it gets
# fewer rows and configurations; on a GPU the same tests run at full size.
INTERPRETED_CONFIGS = (0, 1, 5)


def _interpreted(backend, device):
    return backend == "triton" and device == "cpu"


def _logits(B, V, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 2.5
    x[1, : V // 3] = float("-inf")         # masked vocabulary
    x[2] = (x[2] * 2).round() / 2          # many exact ties
    x[3, 5:] = -30.0                       # one large token, a flat tail
    return x.to(device, dtype)


def _mask_from_cutoff(logits, temperature, cutoff):
    x = logits.float() * (1.0 / temperature)
    return (x >= cutoff[:, None]) & (x > float("-inf"))


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg_index", range(len(CONFIGS)),
                         ids=[",".join(f"{k}={v}" for k, v in c.items()) or "plain" for c in CONFIGS])
def test_masks_and_logprobs_equal_reference(backend, device, dtype, cfg_index):
    cfg = CONFIGS[cfg_index]
    if _interpreted(backend, device) and (dtype != torch.float32 or cfg_index not in INTERPRETED_CONFIGS):
        pytest.skip("interpreter: a few configurations are enough")
    B, V = (4, 96) if _interpreted(backend, device) else (6, 1000)
    logits = _logits(6, V, dtype, device)[:B]
    T = 0.8
    tokens, logp, cutoff = sample_with_cutoff(logits, temperature=T, seed=11, backend=backend, **cfg)
    ref_mask = sampling_mask_reference(logits, temperature=T, **cfg)
    assert torch.equal(_mask_from_cutoff(logits, T, cutoff).cpu(), ref_mask.cpu()), f"{backend} {cfg}"
    assert bool(ref_mask.gather(1, tokens[:, None]).all()), "a sampled token lies outside the kept set"
    ref_logp = sampling_logprobs_reference(logits.double(), temperature=T, **cfg).gather(1, tokens[:, None])[:, 0]
    assert_close(logp, ref_logp, rtol=1e-5, atol=2e-5, what=f"logprobs {backend} {cfg}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_row_without_finite_logit(backend, device):
    logits = torch.randn(3, 50, device=device)
    logits[1] = float("-inf")
    tokens, logp = sample(logits, seed=3, backend=backend)
    assert int(tokens[1]) == 0 and math.isnan(float(logp[1]))
    assert torch.isfinite(logp[[0, 2]]).all()


def _chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test; bins expected to get fewer than 5 draws are pooled into one."""
    n = counts.sum()
    keep = probs > 0
    obs, expected = counts[keep], probs[keep] * n
    small = expected < 5
    if small.any():
        obs = torch.cat([obs[~small], obs[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = float(((obs - expected) ** 2 / expected).sum())
    df = obs.numel() - 1
    return float(1.0 - torch.special.gammainc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("cfg", [dict(temperature=0.7), dict(temperature=1.3, top_k=6, top_p=0.85)],
                         ids=["temperature", "top_k+top_p"])
def test_chi_square_against_softmax(backend, device, cfg):
    # One small-vocabulary distribution repeated over many rows: each row is an independent draw (row index is part
    # of the random stream), and a few seeds give more draws.
    if _interpreted(backend, device) and "top_k" in cfg:
        pytest.skip("interpreter: 33-step bisections per row are too slow for many draws; truncation is covered by "
                    "the mask test and the draw by the plain case (full size on a GPU)")
    V = 8
    base = torch.tensor([1.5, 0.2, -0.7, 2.0, 0.0, -2.5, 1.0, -1.0], dtype=torch.float64)
    rows, seeds = (60, 2) if _interpreted(backend, device) else (4000, 3)
    logits = base.expand(rows, V).to(device, torch.float32).contiguous()
    counts = torch.zeros(V, dtype=torch.float64)
    for s in range(seeds):
        tokens, _ = sample(logits, seed=1000 + s, backend=backend, **cfg)
        counts += torch.bincount(tokens.cpu(), minlength=V).double()
    probs = sampling_logprobs_reference(base[None], **cfg)[0].exp()
    assert counts[probs == 0].sum() == 0, "drew a truncated token"
    p = _chi_square_pvalue(counts, probs)
    assert p > 1e-4, f"{backend}: chi-square p-value {p:.2e}, counts {counts.tolist()} vs probs {probs.tolist()}"


@pytest.mark.parametrize("backend,device", PAIRS)
def test_seeded_runs_are_reproducible(backend, device):
    logits = _logits(6, 64, torch.float32, device, seed=5)[: 4 if _interpreted(backend, device) else 6]
    a, la = sample(logits, temperature=1.1, top_p=0.9, seed=1234, backend=backend)
    b, lb = sample(logits, temperature=1.1, top_p=0.9, seed=torch.tensor([1234], device=device), backend=backend)
    assert torch.equal(a, b) and torch.equal(la, lb)
    draws = {tuple(sample(logits, temperature=5.0, seed=s, backend=backend)[0].tolist()) for s in range(3)}
    assert len(draws) > 1, "different seeds gave the same draws"


def test_triton_and_torch_share_the_random_stream():
    if not _ext.available("triton", torch.device("cpu")) and not torch.cuda.is_available():
        pytest.skip("no Triton here")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = _logits(5, 80, torch.float32, device, seed=9)
    a, _ = sample(logits, temperature=0.9, top_k=20, seed=77, backend="torch")
    b, _ = sample(logits, temperature=0.9, top_k=20, seed=77, backend="triton")
    assert torch.equal(a.cpu(), b.cpu())


def test_reference_top_p_keeps_ties_together():
    logits = torch.log(torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]], dtype=torch.float64))
    # Mass strictly above the 0.2s is 0.3 < 0.4: all three 0.2s stay, the 0.1 goes (mass above it is 0.9).
    assert sampling_mask_reference(logits, top_p=0.4).tolist() == [[True, True, True, True, False]]
    assert sampling_mask_reference(logits, top_p=0.25).tolist() == [[True, False, False, False, False]]
    assert sampling_mask_reference(logits, top_k=2).tolist() == [[True, True, True, True, False]]
    assert sampling_mask_reference(logits, min_p=0.5).tolist() == [[True, True, True, True, False]]


def test_bad_input_names_the_argument():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="temperature"):
        sample(x, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample(x, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(x, top_k=-1)
    with pytest.raises(ValueError, match="min_p"):
        sample(x, min_p=1.5)
    with pytest.raises(ValueError, match="logits"):
        sample(x[0])
    with pytest.raises(TypeError, match="logits"):
        sample(x.long())
    with pytest.raises(TypeError, match="seed"):
        sample(x, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        sample(x, seed=torch.tensor([1, 2]))
