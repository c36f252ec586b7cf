"""Fused token log-probs and entropy from logits: ``token_logprobs``.

Order as in Liger: host functions for each backend (forward / backward), the torch.library ops that dispatch to
them, the autograd Function, then the public function. The kernels live in csrc/isa/logprob_isa.cpp (CPU),
csrc/logprob_cuda.cu (CUDA) and kernels/logprob.py (Triton); ``token_logprobs_reference`` is the definition.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from . import _grad_cache
from ._checks import check_positive_float, check_same_device, check_tensor

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Reference (the definition of the op)
# ----------------------------------------------------------------------------------------------------------------
def token_logprobs_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
):
    """Plain torch: ``log_softmax(logits / temperature)`` gathered at ``labels`` (0 where ignored), and entropy.

    Computes in float64 for float64 input, float32 otherwise; materialises ``[..., V]`` intermediates.
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp_all = torch.log_softmax(x / temperature, dim=-1)
    ignored = labels == ignore_index
    safe = labels.masked_fill(ignored, 0)
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1).masked_fill(ignored, 0.0)
    if not return_entropy:
        return logp
    p = logp_all.exp()
    # p log p is 0 where p == 0 (logits at -inf); where() keeps 0 * -inf out of values and gradients.
    entropy = -(p * torch.where(p > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
    return logp, entropy


# ----------------------------------------------------------------------------------------------------------------
# Layout helpers: logits as [B, T, V] rows with element strides (sB, sT) and unit stride along V.
# ----------------------------------------------------------------------------------------------------------------
def _rows_view(logits: torch.Tensor, labels: torch.Tensor):
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.dim() == 2:
        B, T, V = 1, logits.shape[0], logits.shape[1]
        sB, sT = 0, logits.stride(0)
        lsB, lsT = 0, labels.stride(0)
    else:
        B, T, V = logits.shape
        sB, sT = logits.stride(0), logits.stride(1)
        lsB, lsT = labels.stride(0), labels.stride(1)
    return logits, (B, T, V, sB, sT), (lsB, lsT)


def _grad_strides(grad: torch.Tensor):
    return (0, grad.stride(0)) if grad.dim() == 2 else (grad.stride(0), grad.stride(1))


def _triton_block(V: int, elem_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps): wider slices for 2-byte logits, so each slice's max reduction is amortised over more
    bytes. On an H100 at V=151936 bf16, 8192 reached 63% of copy bandwidth and 16384 only 55% (bench/RESULTS.md)."""
    cap = 8192 if elem_size <= 2 else 4096
    block = min(cap, triton_next_pow2(V))
    return block, (16 if block >= 8192 else 8 if block >= 2048 else 4)


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ----------------------------------------------------------------------------------------------------------------
# Host functions per backend
# ----------------------------------------------------------------------------------------------------------------
def _forward_native(logits, labels, inv_temp, ignore_index, with_entropy, device_kind):
    logits, (B, T, V, sB, sT), (lsB, lsT) = _rows_view(logits, labels)
    n = B * T
    logp = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    lse = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(labels.shape if with_entropy else (0,), dtype=torch.float32, device=logits.device)
    if n == 0:
        return logp, entropy, lse
    C = _ext.native()
    args = (
        logits.data_ptr(), _ext.DTYPE_CODES[logits.dtype], B, T, V, sB, sT,
        labels.data_ptr(), lsB, lsT, inv_temp, ignore_index,
        logp.data_ptr(), entropy.data_ptr() if with_entropy else 0, lse.data_ptr(),
    )
    if device_kind == "cuda":
        C.logprob_fwd_cuda(*args, _ext.stream_of(logits))
    else:
        C.logprob_fwd_cpu(*args)
    return logp, entropy, lse


def _backward_native(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, out, device_kind):
    logits, (B, T, V, sB, sT), (lsB, lsT) = _rows_view(logits, labels)
    if B * T == 0:
        return
    gsB, gsT = _grad_strides(out)
    C = _ext.native()
    args = (
        logits.data_ptr(), _ext.DTYPE_CODES[logits.dtype], B, T, V, sB, sT,
        labels.data_ptr(), lsB, lsT, inv_temp, ignore_index,
        lse.data_ptr(), entropy.data_ptr() if grad_entropy is not None else 0,
        grad_logp.data_ptr() if grad_logp is not None else 0,
        grad_entropy.data_ptr() if grad_entropy is not None else 0,
        out.data_ptr(), gsB, gsT,
    )
    if device_kind == "cuda":
        C.logprob_bwd_cuda(*args, _ext.stream_of(logits))
    else:
        C.logprob_bwd_cpu(*args)


def _forward_triton(logits, labels, inv_temp, ignore_index, with_entropy):
    K = _ext.triton_kernels().logprob
    logits, (B, T, V, sB, sT), (lsB, lsT) = _rows_view(logits, labels)
    logp = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    lse = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(labels.shape if with_entropy else (0,), dtype=torch.float32, device=logits.device)
    if B * T == 0:
        return logp, entropy, lse
    block, warps = _triton_block(V, logits.element_size())
    K.logprob_fwd_kernel[(B * T,)](
        logits, labels, logp, entropy if with_entropy else logp, lse,
        T, V, sB, sT, lsB, lsT, inv_temp, ignore_index,
        HAS_ENTROPY=with_entropy, BLOCK=block, num_warps=warps,
    )
    return logp, entropy, lse


def _backward_triton(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, out):
    K = _ext.triton_kernels().logprob
    logits, (B, T, V, sB, sT), (lsB, lsT) = _rows_view(logits, labels)
    if B * T == 0:
        return
    gsB, gsT = _grad_strides(out)
    block, warps = _triton_block(V, logits.element_size())
    K.logprob_bwd_kernel[(B * T,)](
        logits, labels, lse,
        entropy if grad_entropy is not None else lse,
        grad_logp if grad_logp is not None else lse,
        grad_entropy if grad_entropy is not None else lse,
        out, T, V, sB, sT, lsB, lsT, gsB, gsT, inv_temp, ignore_index,
        HAS_GLP=grad_logp is not None, HAS_GENT=grad_entropy is not None, BLOCK=block, num_warps=warps,
    )


def _forward_torch(logits, labels, inv_temp, ignore_index, with_entropy):
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(out_dtype) * inv_temp
    # Shift by the row max before anything else: log p = (x - m) - log sum e^(x - m) keeps float32 accurate
    # when the logits sit far from 0 (x - lse directly would cancel catastrophically).
    m = x.amax(dim=-1, keepdim=True)
    xs = x - m
    lse_s = torch.logsumexp(xs, dim=-1)
    lse = lse_s + m.squeeze(-1)
    ignored = labels == ignore_index
    zs = xs.gather(-1, labels.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)
    logp = (zs - lse_s).masked_fill(ignored, 0.0)
    if with_entropy:
        logp_all = xs - lse_s.unsqueeze(-1)
        p = logp_all.exp()
        entropy = -(p * torch.where(p > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
    else:
        entropy = logp.new_empty((0,))
    return logp, entropy, lse


def _backward_torch(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index):
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(work) * inv_temp
    # (x - m) - (lse - m), for the same reason as in _forward_torch.
    m = x.amax(dim=-1, keepdim=True).nan_to_num(neginf=0.0)
    logp_all = (x - m) - (lse.to(work).unsqueeze(-1) - m)
    p = logp_all.exp()
    g = torch.zeros_like(x)
    if grad_logp is not None:
        ignored = labels == ignore_index
        gl = grad_logp.to(work).masked_fill(ignored, 0.0).unsqueeze(-1)
        onehot = torch.zeros_like(x).scatter_(-1, labels.masked_fill(ignored, 0).unsqueeze(-1), 1.0)
        g = g + gl * (onehot - p)
    if grad_entropy is not None:
        H = entropy.to(work).unsqueeze(-1)
        g = g - grad_entropy.to(work).unsqueeze(-1) * torch.where(p > 0, p * (logp_all + H), torch.zeros_like(p))
    return (g * inv_temp).to(logits.dtype)


# ----------------------------------------------------------------------------------------------------------------
# torch.library ops (so torch.compile traces around the kernels instead of into them)
# ----------------------------------------------------------------------------------------------------------------
def _out_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.custom_op("smtpo_fast::token_logprobs_fwd", mutates_args=())
def _token_logprobs_fwd(
    logits: torch.Tensor, labels: torch.Tensor, inv_temp: float, ignore_index: int, with_entropy: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend in ("cpu", "cuda"):
        return _forward_native(logits, labels, inv_temp, ignore_index, with_entropy, backend)
    if backend == "triton":
        return _forward_triton(logits, labels, inv_temp, ignore_index, with_entropy)
    return _forward_torch(logits, labels, inv_temp, ignore_index, with_entropy)


@_token_logprobs_fwd.register_fake
def _(logits, labels, inv_temp, ignore_index, with_entropy, backend):
    dt = _out_dtype(logits)
    ent_shape = labels.shape if with_entropy else (0,)
    return labels.new_empty(labels.shape, dtype=dt), labels.new_empty(ent_shape, dtype=dt), labels.new_empty(labels.shape, dtype=dt)


def _run_backward(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, backend, out):
    if backend in ("cpu", "cuda"):
        _backward_native(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, out, backend)
    elif backend == "triton":
        _backward_triton(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, out)
    else:
        out.copy_(_backward_torch(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index))


@torch.library.custom_op("smtpo_fast::token_logprobs_bwd", mutates_args=())
def _token_logprobs_bwd(
    logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor,
    grad_logp: Optional[torch.Tensor], grad_entropy: Optional[torch.Tensor],
    inv_temp: float, ignore_index: int, backend: str,
) -> torch.Tensor:
    if backend == "cpu":
        # A recycled buffer when one is idle: a fresh [N, V] tensor would be written into new pages (see _grad_cache).
        out = _grad_cache.empty(logits.shape, logits.dtype)
    else:
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _run_backward(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, backend, out)
    return out


@_token_logprobs_bwd.register_fake
def _(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("smtpo_fast::token_logprobs_bwd_", mutates_args=("logits",))
def _token_logprobs_bwd_inplace(
    logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor,
    grad_logp: Optional[torch.Tensor], grad_entropy: Optional[torch.Tensor],
    inv_temp: float, ignore_index: int, backend: str,
) -> None:
    # The kernels read each element before writing its gradient over it; the torch path computes, then copies.
    _run_backward(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, backend, logits)


@_token_logprobs_bwd_inplace.register_fake
def _(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, backend):
    return None


class TokenLogprobsFunction(torch.autograd.Function):
    """autograd wrapper: forward saves only per-row statistics (lse, entropy), backward is a kernel too."""

    @staticmethod
    def forward(ctx, logits, labels, inv_temp, ignore_index, with_entropy, inplace_backward, backend):
        logp, entropy, lse = torch.ops.smtpo_fast.token_logprobs_fwd(
            logits, labels, inv_temp, ignore_index, with_entropy, backend
        )
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.cfg = (inv_temp, ignore_index, inplace_backward, backend)
        ctx.mark_non_differentiable(lse)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_lse):
        logits, labels, lse, entropy = ctx.saved_tensors
        inv_temp, ignore_index, inplace, backend = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        dt = lse.dtype
        gl = None if grad_logp is None else grad_logp.to(dt).contiguous()
        ge = None if grad_entropy is None or grad_entropy.numel() == 0 else grad_entropy.to(dt).contiguous()
        if inplace and logits.stride(-1) == 1:
            torch.ops.smtpo_fast.token_logprobs_bwd_(logits, labels, lse, entropy, gl, ge, inv_temp, ignore_index, backend)
            grad = logits
        else:
            grad = torch.ops.smtpo_fast.token_logprobs_bwd(logits, labels, lse, entropy, gl, ge, inv_temp, ignore_index, backend)
        return grad, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------------------------
def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    inplace_backward: bool = False,
    backend: str | None = None,
):
    """Per-token ``log softmax(logits / temperature)[label]`` and, optionally, the entropy of the same distribution.

    Args:
        logits: ``[N, V]`` or ``[B, T, V]`` float32 | bfloat16 | float16 (float64 runs the torch reference), any
            V >= 1, any strides with unit stride along V (``logits[:, :-1]`` is read without a copy).
        labels: ``[N]`` or ``[B, T]`` int64 (int32 is widened), in ``[0, V)`` or equal to ``ignore_index``.
        temperature: positive; the distribution is ``softmax(logits / temperature)``.
        ignore_index: rows whose label equals it get log-prob 0 and no log-prob gradient.
        return_entropy: also return the entropy ``[N] | [B, T]`` (computed for every row, ignored ones too).
        inplace_backward: write the gradient into the logits' storage in backward (saves one ``[N, V]`` buffer;
            the logits hold the gradient afterwards, as with flash-attn's cross-entropy).
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one (``$SMTPO_BACKEND``).

    CPU gradient buffers: with the CPU extension, the default (not in-place) backward takes its ``[..., V]``
    gradient, when it is 4 MiB or more, from a small cache of recycled buffers instead of a fresh tensor, whose
    pages the kernel would first have to fault in (at 4096 x 49152 float32 that costs three times the kernel). A
    buffer is handed out again only once nothing references it: not the gradient, a view of it, a ``.grad`` that
    holds it, nor its storage. At most ``$SMTPO_GRAD_CACHE_BLOCKS`` (default 2) buffers are kept, and the idle ones
    stay resident between steps (about one gradient's worth of memory); sizes are rounded up (<= 12.5%) so nearby
    shapes share a buffer. ``SMTPO_GRAD_CACHE=0`` turns the cache off, ``smtpo_fast.ops.empty_grad_cache()``
    releases the idle buffers (like ``torch.cuda.empty_cache``), ``smtpo_fast.ops.grad_cache_info()`` reports
    them. Such a gradient's storage cannot be resized (``resize_`` to a larger size raises).

    Returns:
        ``logp`` float32 of ``labels``' shape, or ``(logp, entropy)`` with ``return_entropy``.
        (float64 for float64 logits.) Differentiable w.r.t. ``logits``.
    """
    check_tensor("logits", logits, dtypes=LOGIT_DTYPES, ndim=(2, 3))
    check_tensor("labels", labels, dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8), ndim=(1, 2))
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: shape {tuple(labels.shape)} must equal logits' leading shape {tuple(logits.shape[:-1])}"
        )
    check_same_device(logits=logits, labels=labels)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"logits: vocabulary size (last dim) must be >= 1, got shape {tuple(logits.shape)}")
    inv_temp = 1.0 / check_positive_float("temperature", temperature)
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if labels.dtype != torch.int64:
        labels = labels.long()
    # A data-dependent check: eager only (under torch.compile it would break the graph).
    if labels.numel() and not torch.compiler.is_compiling():
        bad = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
        if bool(bad.any()):
            first = labels[bad].flatten()[0].item()
            raise ValueError(
                f"labels: values must be in [0, {V}) or equal ignore_index={ignore_index}; found {first}"
            )
    name = _ext.select("token_logprobs", logits.device, backend, logits.dtype, "logits")
    logp, entropy, _ = TokenLogprobsFunction.apply(
        logits, labels, inv_temp, ignore_index, bool(return_entropy), bool(inplace_backward), name
    )
    return (logp, entropy) if return_entropy else logp
