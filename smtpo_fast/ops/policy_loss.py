"""PPO clipped policy loss with a fused backward (``ppo_policy_loss``) and per-token KL penalties (``kl_penalty``).

Order as in logprob.py: the reference (the definition, plain differentiable torch), host functions per backend,
``torch.library`` ops, the autograd Function, then the public functions. Kernels: csrc/advantages_cpu.cpp (CPU),
csrc/advantages_cuda.cu (CUDA), kernels/advantages.py (Triton); the per-token math (PPO and KL) is in
csrc/advantages_math.h, shared by the CPU and CUDA builds.

The forward kernel reduces each row to five float64 partials (valid count, loss sum, clipped count, approx-KL sum,
dual-clipped count); the loss and the statistics come from those [B, 5] numbers, so nothing of size [B, T] is
saved for backward beyond the inputs. The backward kernel recomputes each token's derivative and scales it by its
row's weight in the aggregated loss.
"""

from __future__ import annotations

import torch

from .. import _ext
from ._checks import check_same_device, check_tensor
from .advantages import FLOAT_DTYPES, _as_float, _check_mask, _f64_params, _mask_bool, _work_dtype

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")
_N_STATS = 5


# ----------------------------------------------------------------------------------------------------------------
# Reference (the definition of the op)
# ----------------------------------------------------------------------------------------------------------------
def ppo_policy_loss_reference(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2, dual_clip=None,
                              agg="token-mean"):
    """Plain differentiable torch, verl's ``compute_policy_loss`` + ``agg_loss`` (see ``ppo_policy_loss``)."""
    m = _mask_bool(mask)
    neg_kl = torch.clamp(logp - old_logp, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped_loss = torch.maximum(l1, l2)
    clipped = l2 > l1
    pg = clipped_loss
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        l3 = -advantages * dual_clip
        pg = torch.where(advantages < 0, torch.minimum(l3, clipped_loss), clipped_loss)
        dual = (advantages < 0) & (clipped_loss > l3)
    zero = torch.zeros_like(pg)
    pg = torch.where(m, pg, zero)
    n_row = m.sum(-1).to(pg.dtype)
    n_all = n_row.sum().clamp_min(1)
    rows = (n_row > 0).sum().clamp_min(1).to(pg.dtype)
    if agg == "token-mean":
        loss = pg.sum() / n_all
    elif agg == "seq-mean-token-sum":
        loss = pg.sum(-1).sum() / rows
    else:
        loss = (pg.sum(-1) / n_row.clamp_min(1)).sum() / rows
    with torch.no_grad():
        stats = {
            "clip_frac": (m & clipped).sum().to(pg.dtype) / n_all,
            "approx_kl": torch.where(m, -neg_kl, zero).sum() / n_all,
            "dual_clip_frac": (m & dual).sum().to(pg.dtype) / n_all,
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------------------------
# Host functions per backend
# ----------------------------------------------------------------------------------------------------------------
def _dual(dual_clip: float) -> float:
    return dual_clip if dual_clip > 0 else 0.0


def _fwd_native(logp, old, adv, mask, clip_low, clip_high, dual_clip, device_kind):
    B, T = logp.shape
    stats = torch.zeros(B, _N_STATS, dtype=torch.float64, device=logp.device)
    if B * T == 0:
        return stats
    C = _ext.native()
    args = (_ext.DTYPE_CODES[logp.dtype], B, T, logp.data_ptr(), old.data_ptr(), adv.data_ptr(), mask.data_ptr(),
            clip_low, clip_high, _dual(dual_clip), stats.data_ptr())
    if device_kind == "cuda":
        C.ppo_loss_fwd_cuda(*args, _ext.stream_of(logp))
    else:
        C.ppo_loss_fwd_cpu(*args)
    return stats


def _bwd_native(logp, old, adv, mask, row_scale, clip_low, clip_high, dual_clip, device_kind):
    B, T = logp.shape
    grad = torch.empty_like(logp)
    if B * T == 0:
        return grad
    C = _ext.native()
    args = (_ext.DTYPE_CODES[logp.dtype], B, T, logp.data_ptr(), old.data_ptr(), adv.data_ptr(), mask.data_ptr(),
            clip_low, clip_high, _dual(dual_clip), row_scale.data_ptr(), grad.data_ptr())
    if device_kind == "cuda":
        C.ppo_loss_bwd_cuda(*args, _ext.stream_of(logp))
    else:
        C.ppo_loss_bwd_cpu(*args)
    return grad


def _ppo_block(T: int) -> int:
    return min(1024, max(16, 1 << max(0, (T - 1).bit_length())))


def _fwd_triton(logp, old, adv, mask, clip_low, clip_high, dual_clip):
    K = _ext.triton_kernels().advantages
    B, T = logp.shape
    stats = torch.zeros(B, _N_STATS, dtype=torch.float64, device=logp.device)
    if B * T == 0:
        return stats
    K.ppo_fwd_kernel[(B,)](
        logp, old, adv, mask.view(torch.uint8), stats, T,
        _f64_params(logp.device, clip_low, clip_high, _dual(dual_clip)),
        HAS_DUAL=dual_clip > 0, BLOCK=_ppo_block(T),
    )
    return stats


def _bwd_triton(logp, old, adv, mask, row_scale, clip_low, clip_high, dual_clip):
    K = _ext.triton_kernels().advantages
    B, T = logp.shape
    grad = torch.empty_like(logp)
    if B * T == 0:
        return grad
    block = _ppo_block(T)
    K.ppo_bwd_kernel[(B, (T + block - 1) // block)](
        logp, old, adv, mask.view(torch.uint8), row_scale, grad, T,
        _f64_params(logp.device, clip_low, clip_high, _dual(dual_clip)),
        HAS_DUAL=dual_clip > 0, BLOCK=block,
    )
    return grad


def _ppo_tokens_torch(logp, old, adv, clip_low, clip_high, dual_clip):
    """Per-token loss, d loss / d logp, clipped and dual-clipped flags, and -log ratio: float64 torch."""
    lp, old, adv = logp.double(), old.double(), adv.double()
    raw = lp - old
    d = raw.clamp(-20.0, 20.0)
    ratio = d.exp()
    rc = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    l1, l2 = -adv * ratio, -adv * rc
    clipped = l2 > l1
    loss = torch.where(clipped, l2, l1)
    g = torch.where(clipped, torch.zeros_like(l1), l1)
    dual = torch.zeros_like(clipped)
    if dual_clip > 0:
        l3 = -adv * dual_clip
        dual = (adv < 0) & (loss > l3)
        loss = torch.where(dual, l3, loss)
        g = torch.where(dual, torch.zeros_like(g), g)
    g = torch.where((raw >= -20.0) & (raw <= 20.0), g, torch.zeros_like(g))
    return loss, g, clipped, dual, -d


def _fwd_torch(logp, old, adv, mask, clip_low, clip_high, dual_clip):
    loss, _, clipped, dual, nkl = _ppo_tokens_torch(logp, old, adv, clip_low, clip_high, dual_clip)
    m = mask
    zero = torch.zeros_like(loss)
    return torch.stack([
        m.double().sum(-1),
        torch.where(m, loss, zero).sum(-1),
        (m & clipped).double().sum(-1),
        torch.where(m, nkl, zero).sum(-1),
        (m & dual).double().sum(-1),
    ], dim=-1)


def _bwd_torch(logp, old, adv, mask, row_scale, clip_low, clip_high, dual_clip):
    _, g, _, _, _ = _ppo_tokens_torch(logp, old, adv, clip_low, clip_high, dual_clip)
    return torch.where(mask, g * row_scale.unsqueeze(-1), torch.zeros_like(g)).to(logp.dtype)


# ----------------------------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("smtpo_fast::ppo_loss_fwd", mutates_args=())
def _ppo_loss_fwd(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_low: float, clip_high: float, dual_clip: float, backend: str) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _fwd_native(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, backend)
    if backend == "triton":
        return _fwd_triton(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)
    return _fwd_torch(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)


@_ppo_loss_fwd.register_fake
def _(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, backend):
    return logp.new_empty((logp.shape[0], _N_STATS), dtype=torch.float64)


@torch.library.custom_op("smtpo_fast::ppo_loss_bwd", mutates_args=())
def _ppo_loss_bwd(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  row_scale: torch.Tensor, clip_low: float, clip_high: float, dual_clip: float,
                  backend: str) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _bwd_native(logp, old_logp, advantages, mask, row_scale, clip_low, clip_high, dual_clip, backend)
    if backend == "triton":
        return _bwd_triton(logp, old_logp, advantages, mask, row_scale, clip_low, clip_high, dual_clip)
    return _bwd_torch(logp, old_logp, advantages, mask, row_scale, clip_low, clip_high, dual_clip)


@_ppo_loss_bwd.register_fake
def _(logp, old_logp, advantages, mask, row_scale, clip_low, clip_high, dual_clip, backend):
    return torch.empty_like(logp)


def _aggregate(row_stats: torch.Tensor, agg: str):
    """Loss, per-row weight of each valid token's loss in it, and the statistics, from the [B, 5] partials."""
    n_row, loss_row = row_stats[:, 0], row_stats[:, 1]
    n_all = n_row.sum().clamp_min(1.0)
    rows = (n_row > 0).sum().clamp_min(1).to(row_stats.dtype)
    if agg == "token-mean":
        loss = loss_row.sum() / n_all
        row_scale = (1.0 / n_all).expand(n_row.shape)
    elif agg == "seq-mean-token-sum":
        loss = loss_row.sum() / rows
        row_scale = (1.0 / rows).expand(n_row.shape)
    else:
        loss = (loss_row / n_row.clamp_min(1.0)).sum() / rows
        row_scale = 1.0 / (rows * n_row.clamp_min(1.0))
    stats = row_stats[:, 2:].sum(0) / n_all
    return loss, row_scale.contiguous(), stats


class PpoPolicyLossFunction(torch.autograd.Function):
    """Forward: per-row partials kernel, then [B]-sized torch; backward: one elementwise kernel."""

    @staticmethod
    def forward(ctx, logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, backend):
        row_stats = torch.ops.smtpo_fast.ppo_loss_fwd(logp, old_logp, advantages, mask, clip_low, clip_high,
                                                      dual_clip, backend)
        loss, row_scale, stats = _aggregate(row_stats, agg)
        ctx.save_for_backward(logp, old_logp, advantages, mask, row_scale)
        ctx.cfg = (clip_low, clip_high, dual_clip, backend)
        stats = stats.to(logp.dtype)
        ctx.mark_non_differentiable(stats)
        return loss.to(logp.dtype), stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        logp, old_logp, advantages, mask, row_scale = ctx.saved_tensors
        clip_low, clip_high, dual_clip, backend = ctx.cfg
        if not ctx.needs_input_grad[0] or grad_loss is None:
            return (None,) * 9
        scale = (row_scale * grad_loss.double()).contiguous()
        grad = torch.ops.smtpo_fast.ppo_loss_bwd(logp, old_logp, advantages, mask, scale, clip_low, clip_high,
                                                 dual_clip, backend)
        return grad, None, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------------------
def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    backend: str | None = None,
):
    """Clipped PPO / GRPO surrogate loss with a fused backward w.r.t. ``logp`` (verl's ``compute_policy_loss``).

    Per valid token (``mask != 0``), with ``ratio = exp(clamp(logp - old_logp, -20, 20))``::

        loss_t = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))
        if dual_clip is not None and A < 0:  loss_t = min(loss_t, -A * dual_clip)       (Dual-clip PPO)

    aggregated as verl's ``agg_loss``:

    * ``"token-mean"``: sum over valid tokens / number of valid tokens (DAPO; verl's default);
    * ``"seq-mean-token-sum"``: per-row sums, averaged over the rows that have a valid token (Dr. GRPO);
    * ``"seq-mean-token-mean"``: per-row means, averaged over the rows that have a valid token (original GRPO).

    With no valid token at all the loss is 0 (and so is its gradient). verl averages the seq-modes over all B rows
    including empty ones; that differs only when a row is entirely masked. NaN in a valid token's inputs makes the
    loss NaN.

    Args:
        logp: ``[B, T]`` float32 | float64 (bfloat16/float16 widened to float32): log-probs of the sampled tokens
            under the current policy; the gradient flows to it (and through the widening back to its dtype).
        old_logp: ``[B, T]``, same choices: log-probs under the behaviour policy (no gradient).
        advantages: ``[B, T]``, same choices (no gradient).
        mask: ``[B, T]`` bool or floating; nonzero = a token the policy produced.
        clip_low, clip_high: the clip range is ``[1 - clip_low, 1 + clip_high]`` (asymmetric: DAPO's clip-higher).
        dual_clip: verl's ``clip_ratio_c`` (> 1, e.g. 3.0), or None for no dual clip.
        agg: one of ``"token-mean" | "seq-mean-token-sum" | "seq-mean-token-mean"``.
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one (``$SMTPO_BACKEND``).

    Returns:
        ``(loss, stats)``: ``loss`` a 0-dim float32 tensor (float64 if any input is float64), differentiable w.r.t.
        ``logp``; ``stats`` a dict of 0-dim tensors (no gradient): ``"clip_frac"`` (share of valid tokens where the
        clipped term won, verl's ``pg_clipfrac``), ``"approx_kl"`` (mean of ``old_logp - logp`` after the clamp,
        verl's ``ppo_kl``), ``"dual_clip_frac"`` (share where the dual clip applied, verl's ``pg_clipfrac_lower``).
    """
    for name, t in (("logp", logp), ("old_logp", old_logp), ("advantages", advantages)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES, ndim=(2,))
    for name, t in (("old_logp", old_logp), ("advantages", advantages)):
        if t.shape != logp.shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} must equal logp's {tuple(logp.shape)}")
    _check_mask("mask", mask, logp.shape)
    check_same_device(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    clip_low, clip_high = _clip("clip_low", clip_low, 1.0), _clip("clip_high", clip_high, float("inf"))
    if dual_clip is None:
        dual = 0.0
    else:
        dual = _clip("dual_clip", dual_clip, float("inf"))
        if dual <= 1.0:
            raise ValueError(f"dual_clip: expected a number > 1 (verl's clip_ratio_c, e.g. 3.0), got {dual_clip!r}")
    if agg not in AGG_MODES:
        raise ValueError(f"agg: expected one of {AGG_MODES}, got {agg!r}")
    dt = _work_dtype(logp, old_logp, advantages)
    name = _ext.select("ppo_policy_loss", logp.device, backend)
    loss, stats = PpoPolicyLossFunction.apply(
        logp.to(dt).contiguous(), _as_float(old_logp.detach(), dt), _as_float(advantages.detach(), dt),
        _mask_bool(mask), clip_low, clip_high, dual, agg, name,
    )
    return loss, {"clip_frac": stats[0], "approx_kl": stats[1], "dual_clip_frac": stats[2]}


def _clip(name: str, value, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not (0.0 <= v <= hi):
        raise ValueError(f"{name}: expected a number in [0, {hi}], got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------------------------
# kl_penalty: reference, host functions, torch.library ops, autograd Function, public op
# ----------------------------------------------------------------------------------------------------------------
def kl_penalty_reference(logp, ref_logp, kind="k1"):
    """Plain differentiable torch, verl's ``kl_penalty`` ("kl", "mse", "low_var_kl"), float64 inside."""
    d = logp.double() - ref_logp.detach().double()
    if kind == "k1":
        out = d
    elif kind == "k2":
        out = 0.5 * d * d
    else:
        neg = torch.clamp(-d, -20.0, 20.0)
        out = torch.clamp(torch.exp(neg) - neg - 1.0, -10.0, 10.0)
    return out.to(_work_dtype(logp, ref_logp))


def _kl_torch(logp, ref, kind_code, grad_out=None):
    """Value (forward) or grad_out * d value / d logp (backward), float64 inside: k3 = e^x - x - 1 cancels badly
    in float32 for small x."""
    d = logp.double() - ref.double()
    if kind_code == 0:
        value, slope = d, torch.ones_like(d)
    elif kind_code == 1:
        value, slope = 0.5 * d * d, d
    else:
        x_raw = -d
        x = x_raw.clamp(-20.0, 20.0)
        ex = x.exp()
        y = ex - x - 1.0
        value = y.clamp(-10.0, 10.0)
        passes = (x_raw >= -20.0) & (x_raw <= 20.0) & (y >= -10.0) & (y <= 10.0)
        slope = torch.where(passes, 1.0 - ex, torch.zeros_like(ex))
    out = value if grad_out is None else grad_out.double() * slope
    return out.to(logp.dtype)


def _kl_native(logp, ref, kind_code, grad_out, device_kind):
    out = torch.empty_like(logp)
    n = logp.numel()
    if n == 0:
        return out
    C = _ext.native()
    code = _ext.DTYPE_CODES[logp.dtype]
    stream = (_ext.stream_of(logp),) if device_kind == "cuda" else ()
    if grad_out is None:
        fn = C.kl_penalty_fwd_cuda if device_kind == "cuda" else C.kl_penalty_fwd_cpu
        fn(kind_code, code, n, logp.data_ptr(), ref.data_ptr(), out.data_ptr(), *stream)
    else:
        fn = C.kl_penalty_bwd_cuda if device_kind == "cuda" else C.kl_penalty_bwd_cpu
        fn(kind_code, code, n, logp.data_ptr(), ref.data_ptr(), grad_out.data_ptr(), out.data_ptr(), *stream)
    return out


def _kl_triton(logp, ref, kind_code, grad_out):
    K = _ext.triton_kernels().advantages
    out = torch.empty_like(logp)
    n = logp.numel()
    if n == 0:
        return out
    block = 1024
    K.kl_penalty_kernel[((n + block - 1) // block,)](
        logp, ref, grad_out if grad_out is not None else logp, out, n,
        KIND=kind_code, BACKWARD=grad_out is not None, BLOCK=block,
    )
    return out


def _kl_dispatch(logp, ref, kind_code, grad_out, backend):
    if backend in ("cpu", "cuda"):
        return _kl_native(logp, ref, kind_code, grad_out, backend)
    if backend == "triton":
        return _kl_triton(logp, ref, kind_code, grad_out)
    return _kl_torch(logp, ref, kind_code, grad_out)


@torch.library.custom_op("smtpo_fast::kl_penalty_fwd", mutates_args=())
def _kl_penalty_fwd(logp: torch.Tensor, ref_logp: torch.Tensor, kind: int, backend: str) -> torch.Tensor:
    return _kl_dispatch(logp, ref_logp, kind, None, backend)


@_kl_penalty_fwd.register_fake
def _(logp, ref_logp, kind, backend):
    return torch.empty_like(logp)


@torch.library.custom_op("smtpo_fast::kl_penalty_bwd", mutates_args=())
def _kl_penalty_bwd(logp: torch.Tensor, ref_logp: torch.Tensor, grad_out: torch.Tensor, kind: int,
                    backend: str) -> torch.Tensor:
    return _kl_dispatch(logp, ref_logp, kind, grad_out, backend)


@_kl_penalty_bwd.register_fake
def _(logp, ref_logp, grad_out, kind, backend):
    return torch.empty_like(logp)


class KlPenaltyFunction(torch.autograd.Function):
    """Elementwise kernel both ways; backward recomputes the slope from the saved inputs."""

    @staticmethod
    def forward(ctx, logp, ref_logp, kind_code, backend):
        ctx.save_for_backward(logp, ref_logp)
        ctx.cfg = (kind_code, backend)
        return torch.ops.smtpo_fast.kl_penalty_fwd(logp, ref_logp, kind_code, backend)

    @staticmethod
    def backward(ctx, grad_out):
        logp, ref_logp = ctx.saved_tensors
        kind_code, backend = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = torch.ops.smtpo_fast.kl_penalty_bwd(logp, ref_logp, grad_out.to(logp.dtype).contiguous(), kind_code,
                                                   backend)
        return grad, None, None, None


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1", *,
               backend: str | None = None) -> torch.Tensor:
    """Per-token KL estimate between the policy and a reference policy, differentiable w.r.t. ``logp``.

    With ``d = logp - ref_logp`` (Schulman's estimators, as verl's ``kl_penalty``):

    * ``"k1"``: ``d`` (verl ``"kl"``);
    * ``"k2"``: ``d**2 / 2`` (verl ``"mse"``);
    * ``"k3"``: ``exp(-d) + d - 1`` with ``-d`` clamped to [-20, 20] and the result to [-10, 10] (verl
      ``"low_var_kl"``, the GRPO paper's KL term); no gradient where a clamp binds.

    Every backend computes in float64 (k3 cancels badly in float32 near d = 0); NaN propagates elementwise.

    Args:
        logp: ``[...]`` float32 | float64 (bfloat16/float16 widened to float32), current policy log-probs.
        ref_logp: same shape, reference policy log-probs (no gradient).
        kind: ``"k1" | "k2" | "k3"``.
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one (``$SMTPO_BACKEND``).

    Returns:
        ``[...]`` float32 (float64 if either input is float64); mask and aggregate it with ``masked_mean``.
    """
    check_tensor("logp", logp, dtypes=FLOAT_DTYPES)
    check_tensor("ref_logp", ref_logp, dtypes=FLOAT_DTYPES)
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp: shape {tuple(ref_logp.shape)} must equal logp's {tuple(logp.shape)}")
    check_same_device(logp=logp, ref_logp=ref_logp)
    if kind not in KL_KINDS:
        raise ValueError(f"kind: expected one of {KL_KINDS}, got {kind!r}")
    dt = _work_dtype(logp, ref_logp)
    name = _ext.select("kl_penalty", logp.device, backend)
    return KlPenaltyFunction.apply(logp.to(dt).contiguous(), _as_float(ref_logp.detach(), dt),
                                   KL_KINDS.index(kind), name)
