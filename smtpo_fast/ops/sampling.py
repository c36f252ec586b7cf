"""Fused sampling from logits with temperature, top-k, top-p and min-p: ``sample``.

The truncation rules (the definition, ``sampling_mask_reference``), applied in HF's order:

1. ``x = logits * (1 / temperature)`` (float32; float64 for float64 logits);
2. top-k: keep ``x >= k-th largest x`` (ties at the k-th value are all kept);
3. top-p, on the top-k survivors renormalised: keep token ``i`` iff the probability mass of the tokens strictly
   more likely than ``i`` is ``< top_p`` (so tied tokens are kept or dropped together, whatever their order);
4. min-p: keep ``p_i >= min_p * p_max``, i.e. ``x_i >= max(x) + log(min_p)``;
5. ``-inf`` logits are never kept.

Every rule keeps the tokens at or above a threshold, so the kept set of a row is ``x >= cutoff`` for one
per-row ``cutoff``; the kernels find it without sorting the vocabulary (a 32-step bisection over the
order-preserving integer keys of float32) and return it, which is how the tests compare masks exactly.

The sampled token is drawn from ``softmax(x)`` restricted to the kept set; its log-prob under that distribution is
returned. Randomness is a counter-based hash of ``(seed, row, token index)``: a seeded call is reproducible on
its backend and needs no generator state, so the draw is capturable in a CUDA graph and never synchronises (the
seed may live in a device tensor that the caller bumps in place). Backends: CUDA (one block per row,
csrc/sampling_cuda.cu), Triton (kernels/sampling.py), CPU (csrc/isa/sampling_isa.cpp: inverse-CDF draw with one
uniform per row) and torch (Gumbel-max over the reference mask).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _ext
from ._checks import check_positive_float, check_tensor

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# Reference (the definition of the op)
# ----------------------------------------------------------------------------------------------------------------
def sampling_mask_reference(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """``[B, V]`` bool: the tokens the truncation rules keep (module docstring), computed by sorting."""
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(work) * (1.0 / temperature)
    keep = x > float("-inf")
    V = x.shape[-1]
    if top_k is not None and 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        keep &= x >= kth
    if top_p is not None and top_p < 1.0:
        xm = x.masked_fill(~keep, float("-inf"))
        m = xm.max(dim=-1, keepdim=True).values
        e = torch.where(keep, torch.exp(xm - m), torch.zeros((), dtype=work, device=x.device))
        Z = e.sum(-1, keepdim=True)
        neg_sorted, order = torch.sort(-xm, dim=-1)                  # ascending -x == descending x
        prefix = torch.nn.functional.pad(torch.cumsum(e.gather(-1, order), dim=-1), (1, 0))
        n_greater = torch.searchsorted(neg_sorted.contiguous(), (-xm).contiguous(), side="left")
        mass_greater = prefix.gather(-1, n_greater)
        keep &= mass_greater < top_p * Z
    if min_p is not None and min_p > 0.0:
        m = x.max(dim=-1, keepdim=True).values
        keep &= x >= m + math.log(min_p)
    return keep


def sampling_logprobs_reference(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """``[B, V]`` log-probabilities of the truncated, renormalised sampling distribution (-inf where dropped)."""
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    keep = sampling_mask_reference(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    x = (logits.to(work) * (1.0 / temperature)).masked_fill(~keep, float("-inf"))
    return torch.log_softmax(x, dim=-1)


def sample_reference(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, generator=None):
    """Draw with ``torch.multinomial`` from the reference distribution: ``(tokens [B] int64, logprobs [B])``."""
    logp = sampling_logprobs_reference(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1).float()


# ----------------------------------------------------------------------------------------------------------------
# The counter-based random bits shared by the torch, Triton and CUDA backends (csrc/sampling_cuda.cu,
# kernels/sampling.py): murmur3's 32-bit finaliser over (seed, row, column).
# ----------------------------------------------------------------------------------------------------------------
def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def hash_uniform(seed: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1) (float32, 24 random bits) for ``(seed, row, col)``; broadcasts ``rows`` against ``cols``."""
    seed = seed.long()
    lo, hi = seed & _M32, (seed >> 32) & _M32
    key = _fmix32(lo ^ _fmix32(hi ^ _fmix32((rows.long() + 0x9E3779B9) & _M32)))
    bits = _fmix32(key ^ _fmix32((cols.long() * 0x27D4EB2F + 0x165667B1) & _M32))
    return ((bits >> 8).float() + 0.5) * (1.0 / 16777216.0)


# ----------------------------------------------------------------------------------------------------------------
# Host functions per backend: each returns (tokens [B] int64, logprobs [B] float32, cutoff [B] float32)
# ----------------------------------------------------------------------------------------------------------------
def _params(top_k, top_p, min_p):
    return int(top_k or 0), float(1.0 if top_p is None else top_p), float(0.0 if min_p is None else min_p)


def _sample_torch(logits, inv_temp, top_k, top_p, min_p, seed):
    B, V = logits.shape
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    temperature = 1.0 / inv_temp
    keep = sampling_mask_reference(logits, temperature=temperature, top_k=top_k or None,
                                   top_p=top_p if top_p < 1.0 else None, min_p=min_p or None)
    x = logits.to(work) * inv_temp
    xk = x.masked_fill(~keep, float("-inf"))
    u = hash_uniform(seed, torch.arange(B, device=x.device)[:, None], torch.arange(V, device=x.device)[None, :])
    gumbel = -torch.log(-torch.log(u.to(work)))
    tokens = torch.argmax(xk + gumbel, dim=-1)
    logp = torch.log_softmax(xk, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    # The smallest kept value (+inf when nothing is kept); the kept set is x >= cutoff among finite x.
    cutoff = x.masked_fill(~keep, float("inf")).min(dim=-1).values
    return tokens, logp.float(), cutoff.float()


def _sample_native(logits, inv_temp, top_k, top_p, min_p, seed, device_kind):
    B, V = logits.shape
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logp = torch.empty(B, dtype=torch.float32, device=logits.device)
    cutoff = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B == 0:
        return tokens, logp, cutoff
    args = (logits.data_ptr(), _ext.DTYPE_CODES[logits.dtype], B, V, logits.stride(0), inv_temp, top_k, top_p,
            min_p, seed.data_ptr(), tokens.data_ptr(), logp.data_ptr(), cutoff.data_ptr())
    C = _ext.native()
    if device_kind == "cuda":
        C.sample_cuda(*args, _ext.stream_of(logits))
    else:
        C.sample_cpu(*args)
    return tokens, logp, cutoff


def _sample_triton(logits, inv_temp, top_k, top_p, min_p, seed):
    K = _ext.triton_kernels().sampling
    B, V = logits.shape
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logp = torch.empty(B, dtype=torch.float32, device=logits.device)
    cutoff = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B == 0:
        return tokens, logp, cutoff
    block = min(4096, 1 << max(0, (V - 1).bit_length()))
    if _ext.triton_interpreted():
        block = min(block, 512)
    K.sample_kernel[(B,)](
        logits, seed, tokens, logp, cutoff, V, logits.stride(0), inv_temp, top_k, top_p, min_p,
        HAS_TOP_K=0 < top_k < V, HAS_TOP_P=top_p < 1.0, HAS_MIN_P=min_p > 0.0, BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return tokens, logp, cutoff


@torch.library.custom_op("smtpo_fast::sample", mutates_args=())
def _sample_op(
    logits: torch.Tensor, seed: torch.Tensor, inv_temp: float, top_k: int, top_p: float, min_p: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend in ("cpu", "cuda"):
        return _sample_native(logits, inv_temp, top_k, top_p, min_p, seed, backend)
    if backend == "triton":
        return _sample_triton(logits, inv_temp, top_k, top_p, min_p, seed)
    return _sample_torch(logits, inv_temp, top_k, top_p, min_p, seed)


@_sample_op.register_fake
def _(logits, seed, inv_temp, top_k, top_p, min_p, backend):
    B = logits.shape[0]
    return (logits.new_empty((B,), dtype=torch.int64), logits.new_empty((B,), dtype=torch.float32),
            logits.new_empty((B,), dtype=torch.float32))


# ----------------------------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------------------------
def _seed_tensor(seed, device) -> torch.Tensor:
    if seed is None:
        # From torch's default CPU generator: a host draw, so no device synchronisation.
        return torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device, non_blocking=True)
    if isinstance(seed, torch.Tensor):
        check_tensor("seed", seed, dtypes=(torch.int64,))
        if seed.numel() != 1:
            raise ValueError(f"seed: expected a one-element int64 tensor, got shape {tuple(seed.shape)}")
        if seed.device != device:
            raise ValueError(f"seed: on {seed.device}, but logits are on {device}")
        return seed.reshape(1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, a one-element int64 tensor or None, got {type(seed).__name__}")
    return torch.tensor([seed & (2**63 - 1)], dtype=torch.int64, device=device)


def sample_with_cutoff(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | torch.Tensor | None = None,
    backend: str | None = None,
):
    """``sample`` that also returns the per-row ``cutoff`` [B] float32: the kept set is ``logits / T >= cutoff``."""
    check_tensor("logits", logits, dtypes=LOGIT_DTYPES, ndim=(2,))
    B, V = logits.shape
    if V < 1:
        raise ValueError(f"logits: vocabulary size (last dim) must be >= 1, got shape {tuple(logits.shape)}")
    inv_temp = 1.0 / check_positive_float("temperature", temperature)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k: expected an int >= 0 or None (0 and None disable it), got {top_k!r}")
    if top_p is not None:
        tp = float(top_p)
        if not (0.0 < tp <= 1.0):
            raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    if min_p is not None:
        mp = float(min_p)
        if not (0.0 <= mp <= 1.0):
            raise ValueError(f"min_p: expected a number in [0, 1], got {min_p!r}")
    k, p, mp = _params(top_k, top_p, min_p)
    if k >= V:
        k = 0
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    seed_t = _seed_tensor(seed, logits.device)
    name = _ext.select("sample", logits.device, backend, logits.dtype, "logits")
    return torch.ops.smtpo_fast.sample(logits, seed_t, inv_temp, k, p, mp, name)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from ``softmax(logits / temperature)`` truncated by top-k, top-p and min-p.

    Args:
        logits: ``[B, V]`` float32 | bfloat16 | float16 (float64 runs the torch backend), unit stride along V.
        temperature: > 0.
        top_k: keep the ``top_k`` most likely tokens (ties at the boundary kept); None or 0 disables.
        top_p: in ``(0, 1]``: nucleus sampling on the top-k survivors (module docstring); None or 1 disables.
        min_p: in ``[0, 1]``: keep tokens with ``p >= min_p * p_max``; None or 0 disables.
        seed: int or one-element int64 tensor on the logits' device (read by the kernel: no sync, CUDA-graph
            friendly); None draws one from torch's default generator. Same seed, same backend: same tokens.
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one.

    Returns:
        ``(tokens [B] int64, logprobs [B] float32)``: the sampled tokens and their log-probabilities under the
        truncated, renormalised sampling distribution. A row without any finite logit gives logprob NaN.
    """
    tokens, logprobs, _ = sample_with_cutoff(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                             min_p=min_p, seed=seed, backend=backend)
    return tokens, logprobs
