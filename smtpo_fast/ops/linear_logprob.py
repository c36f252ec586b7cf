"""Fused LM-head log-probs and entropy: ``linear_token_logprobs(hidden, weight, labels)`` without ``[N, V]`` logits.

``logits = hidden @ weight.T (+ bias)`` is never held whole. Forward walks tiles of ``[rows, vocab]`` logits, runs
the foundation's fused log-prob kernel (``torch.ops.smtpo_fast.token_logprobs_fwd``) on each and keeps only per-row
statistics (log-sum-exp, entropy) -- merged across vocabulary tiles with an online log-sum-exp when a tile does not
span the whole vocabulary. On CUDA the ``triton`` backend goes further: one Triton kernel (kernels/linear_logprob.py)
does the matmul and the online softmax, so no logits reach device memory at all. Backward recomputes each tile,
turns it into d logits in place with ``token_logprobs_bwd_``, and feeds it to the two matmuls for ``d hidden`` and
``d weight`` (and a column sum for ``d bias``), accumulating in float32.

Order as in logprob.py: reference, tiling plan, host functions, torch.library ops, autograd Function, public op.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _ext
from . import logprob as _logprob  # noqa: F401  (registers torch.ops.smtpo_fast.token_logprobs_*)
from ._checks import check_positive_float, check_same_device, check_tensor

HIDDEN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# A vocabulary tile narrower than this makes the matmuls inefficient; tiles are also rounded to it.
_MIN_VOCAB_TILE = 128
# Rows per low-precision d hidden product before it is added to the float32 accumulator.
_DH_BLOCK_ROWS = 1024
# Rows whose local label points at no column: the local ignore index of the tile kernels (labels are >= 0 there).
_NO_LABEL = -1


# ----------------------------------------------------------------------------------------------------------------
# Reference (the definition of the op)
# ----------------------------------------------------------------------------------------------------------------
def linear_token_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
):
    """Plain torch: ``log_softmax((hidden @ weight.T + bias) / temperature)`` gathered at ``labels``, and entropy.

    Materialises the ``[N, V]`` logits; computes in float64 for float64 inputs, float32 otherwise (after the
    matmul, which runs in the inputs' dtype as a framework's LM head would).
    """
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return _logprob.token_logprobs_reference(logits, labels, temperature, ignore_index, return_entropy)


# ----------------------------------------------------------------------------------------------------------------
# Tiling plan
# ----------------------------------------------------------------------------------------------------------------
def _tile_budget_bytes(device: torch.device) -> int:
    """Bytes one tile of logits may take: large enough for efficient matmuls, small next to the naive [N, V]."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(64 << 20, max(8 << 20, free // 16)))
    # CPU: matmul speed is flat from 32 to 256 MiB tiles (2-core AVX-512 bench); take the smaller footprint.
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        free = 1 << 40
    return int(min(64 << 20, max(8 << 20, free // 16)))


def _round_vocab_tile(cols: int, V: int) -> int:
    if cols >= V:
        return V
    return max(_MIN_VOCAB_TILE, cols // _MIN_VOCAB_TILE * _MIN_VOCAB_TILE)


def _plan(N, V, elem_size, budget, chunk_size, vocab_chunk_size):
    """``(fwd_rows, fwd_cols, bwd_rows, bwd_cols)``: the logits tile of forward and of backward.

    Forward prefers whole-vocabulary rows (no log-sum-exp merging). Backward walks the vocabulary in the outer loop
    and prefers all tokens per tile: then each weight row's gradient is one matmul, so ``d weight`` needs no
    accumulator beyond its own float32 matmul, and only ``d hidden`` is accumulated (in float32) across tiles.
    """
    N1 = max(N, 1)
    if chunk_size is not None:
        fwd_rows = bwd_rows = min(chunk_size, N1)
        if vocab_chunk_size is not None:
            fwd_cols = bwd_cols = min(vocab_chunk_size, V)
        else:
            fwd_cols = bwd_cols = _round_vocab_tile(budget // (fwd_rows * elem_size), V)
        return fwd_rows, fwd_cols, bwd_rows, bwd_cols
    if vocab_chunk_size is not None:
        cols = min(vocab_chunk_size, V)
        rows = max(1, min(N1, budget // (cols * elem_size)))
        return rows, cols, rows, cols
    fwd_rows = max(1, min(N1, budget // (V * elem_size)))
    fwd_cols = V
    if fwd_rows < 64 and N1 >= 64:  # the vocabulary is so large that whole rows would starve the matmul
        fwd_rows = 64
        fwd_cols = _round_vocab_tile(budget // (fwd_rows * elem_size), V)
    bwd_cols = _round_vocab_tile(budget // (N1 * elem_size), V)
    bwd_rows = max(1, min(N1, budget // (bwd_cols * elem_size)))
    return fwd_rows, fwd_cols, bwd_rows, bwd_cols


# ----------------------------------------------------------------------------------------------------------------
# Host functions
# ----------------------------------------------------------------------------------------------------------------
def _logits_tile(h_rows, w_cols, b_cols, out):
    """``out = h_rows @ w_cols.T (+ b_cols)`` into a reused buffer (no allocation, no page faults per tile)."""
    if b_cols is None:
        return torch.mm(h_rows, w_cols.T, out=out)
    return torch.addmm(b_cols, h_rows, w_cols.T, out=out)


def _forward_chunked(hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy, rows, cols, backend):
    N, V = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    f32 = _stat_dtype(hidden)
    logp = torch.empty(N, dtype=f32, device=dev)
    lse = torch.empty(N, dtype=f32, device=dev)
    entropy = torch.empty(N if with_entropy else 0, dtype=f32, device=dev)
    if N == 0:
        return logp, entropy, lse
    out_dtype = hidden.dtype
    buf = torch.empty(min(rows, N) * min(cols, V), dtype=out_dtype, device=dev)
    fwd = torch.ops.smtpo_fast.token_logprobs_fwd
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        h, y = hidden[r0:r1], labels[r0:r1]
        if cols >= V:
            tile = _logits_tile(h, weight, bias, buf[: (r1 - r0) * V].view(r1 - r0, V))
            lp, ent, ls = fwd(tile, y, inv_temp, ignore_index, with_entropy, backend)
            logp[r0:r1], lse[r0:r1] = lp, ls
            if with_entropy:
                entropy[r0:r1] = ent
            continue
        # Vocabulary tiles: merge (lse_c, H_c) online. With w_c = e^(lse_c - lse), sum_c w_c = 1 and
        #   lse = logsumexp_c lse_c,   H = lse - sum_c w_c (lse_c - H_c) = sum_c w_c (H_c - log w_c).
        # The last form adds non-negative terms; the middle one cancels two numbers of the logits' size.
        ignored = y == ignore_index
        safe_y = y.masked_fill(ignored, 0)
        no_labels = torch.full_like(y, ignore_index)  # the tile kernels only give lse / entropy here
        run_lse = torch.full((r1 - r0,), float("-inf"), dtype=f32, device=dev)
        run_h = torch.zeros(r1 - r0, dtype=f32, device=dev)
        z_label = torch.zeros(r1 - r0, dtype=f32, device=dev)
        for v0 in range(0, V, cols):
            v1 = min(V, v0 + cols)
            tile = _logits_tile(
                h, weight[v0:v1], None if bias is None else bias[v0:v1],
                buf[: (r1 - r0) * (v1 - v0)].view(r1 - r0, v1 - v0),
            )
            _, ent_c, lse_c = fwd(tile, no_labels, inv_temp, ignore_index, with_entropy, backend)
            inside = (safe_y >= v0) & (safe_y < v1)
            z = tile.gather(1, (safe_y - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1).to(f32) * inv_temp
            z_label = torch.where(inside, z, z_label)
            new_lse = torch.logaddexp(run_lse, lse_c)
            # exp(-inf - (-inf)) would be NaN for rows that are -inf so far; their weight is 0.
            keep = torch.where(run_lse > float("-inf"), torch.exp(run_lse - new_lse), 0.0)
            if with_entropy:
                w_c = torch.where(lse_c > float("-inf"), torch.exp(lse_c - new_lse), 0.0)
                old = torch.where(keep > 0, keep * (run_h - (run_lse - new_lse)), 0.0)
                run_h = old + torch.where(w_c > 0, w_c * (ent_c - (lse_c - new_lse)), 0.0)
            run_lse = new_lse
        lse[r0:r1] = run_lse
        logp[r0:r1] = torch.where(ignored, 0.0, z_label - run_lse)
        if with_entropy:
            entropy[r0:r1] = run_h
    return logp, entropy, lse


def _forward_fused_triton(hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy):
    """CUDA (or the interpreter): one Triton kernel per (row block, vocabulary split); logits stay in registers."""
    K = _ext.triton_kernels().linear_logprob
    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    cfg = K.launch_config(N, V, H, hidden.dtype, dev)
    splits = cfg["SPLITS"]
    m = torch.empty(splits, N, dtype=torch.float32, device=dev)
    s = torch.empty_like(m)
    t = torch.empty_like(m) if with_entropy else m
    zl = torch.empty_like(m)
    if N:
        K.linear_logprob_fwd_kernel[(_cdiv(N, cfg["BLOCK_M"]), splits)](
            hidden, weight, bias if bias is not None else hidden, labels, m, s, t, zl,
            N, V, H, hidden.stride(0), weight.stride(0), inv_temp, ignore_index, cfg["COLS_PER_SPLIT"],
            HAS_BIAS=bias is not None, HAS_ENTROPY=with_entropy, FP32_DOT=hidden.dtype == torch.float32,
            UPCAST_DOT=cfg["UPCAST_DOT"], EVEN_K=cfg["EVEN_K"],
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    # Merge the splits: each holds (m, s = sum e^(z-m), t = sum e^(z-m)(z-m), z_label or 0) over its columns.
    M = m.max(0).values
    live = M > float("-inf")
    scale = torch.where(live & (m > float("-inf")), torch.exp(m - M), 0.0)
    S = (scale * s).sum(0)
    lse = M + torch.log(S)
    ignored = labels == ignore_index
    logp = torch.where(ignored, 0.0, zl.sum(0) - lse)
    if with_entropy:
        T = (scale * (t + torch.where(scale > 0, (m - M) * s, 0.0))).sum(0)
        entropy = torch.log(S) - T / S
    else:
        entropy = logp.new_empty(0)
    return logp, entropy, lse


def _stat_dtype(hidden: torch.Tensor) -> torch.dtype:
    """Per-row statistics and accumulators: float32, or float64 for float64 inputs (the torch backend)."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _backward_chunked(
    hidden, weight, bias, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index,
    rows, cols, backend, need_h, need_w, need_b,
):
    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    f32 = _stat_dtype(hidden)
    # d hidden accumulates across vocabulary tiles: in its own storage when float32, else in a float32 buffer.
    dh = torch.zeros(N, H, dtype=f32, device=dev) if need_h else None
    dw = torch.empty_like(weight) if need_w else None
    db = torch.zeros(V, dtype=f32, device=dev) if need_b else None
    if N == 0 or not (need_h or need_w or need_b):
        if need_w:
            dw.zero_()
        return dh, dw, db
    ignored = labels == ignore_index
    # Ignored rows have no log-prob gradient: zero it here, so the tile kernels can see every label as live.
    gl = None if grad_logp is None else torch.where(ignored, 0.0, grad_logp.to(f32))
    ge = None if grad_entropy is None else grad_entropy.to(f32).contiguous()
    ent = entropy if ge is not None else lse
    safe_y = labels.masked_fill(ignored, 0)
    buf = torch.empty(min(rows, N) * min(cols, V), dtype=hidden.dtype, device=dev)
    single_row_tile = rows >= N
    w_acc = None
    if need_w and weight.dtype != f32 and not single_row_tile:
        w_acc = torch.empty(min(cols, V), H, dtype=f32, device=dev)
    bwd_ = torch.ops.smtpo_fast.token_logprobs_bwd_
    for v0 in range(0, V, cols):
        v1 = min(V, v0 + cols)
        w_v = weight[v0:v1]
        b_v = None if bias is None else bias[v0:v1]
        acc = None  # where this tile's d weight rows are summed over several row tiles, in float32
        if need_w and not single_row_tile:
            acc = dw[v0:v1] if weight.dtype == f32 else w_acc[: v1 - v0]
            acc.zero_()
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            h = hidden[r0:r1]
            tile = _logits_tile(h, w_v, b_v, buf[: (r1 - r0) * (v1 - v0)].view(r1 - r0, v1 - v0))
            y = safe_y[r0:r1]
            inside = (y >= v0) & (y < v1)
            local_y = torch.where(inside, y - v0, 0)
            g_rows = None if gl is None else gl[r0:r1]
            bwd_(tile, local_y, lse[r0:r1], ent[r0:r1], g_rows, None if ge is None else ge[r0:r1],
                 inv_temp, _NO_LABEL, backend)
            if g_rows is not None and v1 - v0 < V:
                # Rows whose label lies in another tile were given column 0 as their label; remove the
                # one-hot there: d logit = g (onehot - p) / T, so column 0 holds g / T too many.
                tile[:, 0] -= torch.where(inside, 0.0, g_rows * inv_temp).to(tile.dtype)
            if need_h:
                dh_rows = dh[r0:r1]
                if tile.dtype == f32:
                    dh_rows.addmm_(tile, w_v)
                else:  # addmm cannot mix dtypes: products in row blocks keep the low-precision temporary small
                    for s0 in range(0, r1 - r0, _DH_BLOCK_ROWS):
                        s1 = min(r1 - r0, s0 + _DH_BLOCK_ROWS)
                        dh_rows[s0:s1].add_(torch.mm(tile[s0:s1], w_v))
            if need_w:
                if acc is None:  # one row tile covers all tokens: one matmul, straight into d weight
                    torch.mm(tile.T, h, out=dw[v0:v1])
                elif tile.dtype == f32:
                    acc.addmm_(tile.T, h)
                else:
                    acc.add_(torch.mm(tile.T, h))
            if need_b:
                db[v0:v1] += tile.sum(0, dtype=f32)
        if acc is not None and acc.dtype != dw.dtype:
            dw[v0:v1].copy_(acc)
    return dh, dw, db


# ----------------------------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("smtpo_fast::linear_token_logprobs_fwd", mutates_args=())
def _linear_token_logprobs_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
    inv_temp: float, ignore_index: int, with_entropy: bool, rows: int, cols: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton" and (hidden.device.type == "cuda" or _ext.triton_interpreted()):
        return _forward_fused_triton(hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy)
    return _forward_chunked(
        hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy, rows, cols, backend
    )


@_linear_token_logprobs_fwd.register_fake
def _(hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy, rows, cols, backend):
    n, dt = hidden.shape[0], _stat_dtype(hidden)
    ent = hidden.new_empty(n if with_entropy else 0, dtype=dt)
    return hidden.new_empty(n, dtype=dt), ent, hidden.new_empty(n, dtype=dt)


@torch.library.custom_op("smtpo_fast::linear_token_logprobs_bwd", mutates_args=())
def _linear_token_logprobs_bwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
    lse: torch.Tensor, entropy: torch.Tensor, grad_logp: Optional[torch.Tensor], grad_entropy: Optional[torch.Tensor],
    inv_temp: float, ignore_index: int, rows: int, cols: int, backend: str,
    need_hidden: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dh, dw, db = _backward_chunked(
        hidden, weight, bias, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index,
        rows, cols, backend, need_hidden, need_weight, need_bias and bias is not None,
    )
    # Gradients not asked for come back as distinct empty tensors (custom ops may not return aliases).
    return (
        hidden.new_empty(0) if dh is None else dh.to(hidden.dtype),
        hidden.new_empty(0) if dw is None else dw,
        hidden.new_empty(0) if db is None else db.to(bias.dtype),
    )


@_linear_token_logprobs_bwd.register_fake
def _(hidden, weight, bias, labels, lse, entropy, grad_logp, grad_entropy, inv_temp, ignore_index, rows, cols,
      backend, need_hidden, need_weight, need_bias):
    return (
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else hidden.new_empty(0),
        torch.empty_like(bias) if (need_bias and bias is not None) else hidden.new_empty(0),
    )


class LinearTokenLogprobsFunction(torch.autograd.Function):
    """Forward keeps per-row (lse, entropy) only; backward recomputes the logits tile by tile."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy, plan, backend):
        fwd_rows, fwd_cols, bwd_rows, bwd_cols = plan
        logp, entropy, lse = torch.ops.smtpo_fast.linear_token_logprobs_fwd(
            hidden, weight, bias, labels, inv_temp, ignore_index, with_entropy, fwd_rows, fwd_cols, backend
        )
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.cfg = (inv_temp, ignore_index, bwd_rows, bwd_cols, backend)
        ctx.mark_non_differentiable(lse)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_lse):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        inv_temp, ignore_index, rows, cols, backend = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_h or need_w or need_b):
            return (None,) * 9
        dt = lse.dtype
        gl = None if grad_logp is None else grad_logp.to(dt).contiguous()
        ge = None if grad_entropy is None or grad_entropy.numel() == 0 else grad_entropy.to(dt).contiguous()
        dh, dw, db = torch.ops.smtpo_fast.linear_token_logprobs_bwd(
            hidden, weight, bias, labels, lse, entropy, gl, ge, inv_temp, ignore_index, rows, cols, backend,
            need_h, need_w, need_b,
        )
        return (dh if need_h else None, dw if need_w else None, db if need_b else None) + (None,) * 6


# ----------------------------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------------------------
def _select_backend(device: torch.device, backend: Optional[str], dtype: Optional[torch.dtype] = None) -> str:
    name = _ext.select("linear_token_logprobs", device, backend, dtype, "hidden")
    # On CUDA the fused Triton forward beats chunked matmul + softmax kernel: it never writes logits.
    if backend is None and name == "cuda" and _ext.available("triton", device) and not _forced_by_env():
        return "triton"
    return name


def _forced_by_env() -> bool:
    return bool(os.environ.get("SMTPO_BACKEND"))


def _check_chunk(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int or None, got {value}")
    return value


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_size: Optional[int] = None,
    vocab_chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
):
    """Per-token ``log softmax((hidden @ weight.T + bias) / temperature)[label]`` (and entropy), no ``[N, V]`` logits.

    Memory beyond the inputs and gradients: one tile of logits (``chunk_size`` rows by up to ``V`` columns) plus
    per-row statistics; backward recomputes each tile (one extra matmul) instead of keeping the logits.

    Args:
        hidden: ``[N, H]`` or ``[..., H]`` float32 | bfloat16 | float16 (float64 runs the torch backend): final
            hidden states (after the last norm).
        weight: ``[V, H]``, hidden's dtype and device: the LM head (may be tied to the input embedding).
        labels: ``[N]`` or hidden's leading shape, int64 (narrower ints are widened), in ``[0, V)`` or equal to
            ``ignore_index``.
        bias: ``[V]`` hidden's dtype, or None.
        temperature: positive; the distribution is ``softmax(logits / temperature)``.
        ignore_index: rows whose label equals it get log-prob 0 and no log-prob gradient.
        return_entropy: also return the entropy (computed for every row, ignored ones too).
        chunk_size: token rows per logits tile; None picks tiles from the shapes and the free memory. The
            vocabulary is tiled too when ``chunk_size * V`` logits would exceed the tile budget.
        vocab_chunk_size: columns per logits tile (None: from the budget).
        backend: ``"torch" | "cpu" | "cuda" | "triton"`` for the softmax part (``"triton"`` on CUDA also fuses the
            forward matmul); default: the fastest usable one (``$SMTPO_BACKEND``).

    Returns:
        ``logp`` float32 of ``labels``' shape, or ``(logp, entropy)`` with ``return_entropy`` (float64 for float64
        inputs). Differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.
    """
    check_tensor("hidden", hidden, dtypes=HIDDEN_DTYPES)
    if hidden.dim() < 1:
        raise ValueError("hidden: expected at least 1 dimension [..., H], got a scalar")
    check_tensor("weight", weight, dtypes=HIDDEN_DTYPES, ndim=(2,))
    check_tensor("labels", labels, dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8))
    if bias is not None:
        check_tensor("bias", bias, dtypes=HIDDEN_DTYPES, ndim=(1,))
    check_same_device(hidden=hidden, weight=weight, labels=labels, bias=bias)
    H = hidden.shape[-1]
    V = weight.shape[0]
    if weight.shape[1] != H:
        raise ValueError(f"weight: expected shape [V, {H}] (H from hidden), got {tuple(weight.shape)}")
    if V < 1:
        raise ValueError(f"weight: vocabulary size (first dim) must be >= 1, got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight: dtype {weight.dtype} must equal hidden's dtype {hidden.dtype}")
    if bias is not None:
        if bias.shape[0] != V:
            raise ValueError(f"bias: expected shape [{V}] (V from weight), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias: dtype {bias.dtype} must equal hidden's dtype {hidden.dtype}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels: shape {tuple(labels.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])}"
        )
    inv_temp = 1.0 / check_positive_float("temperature", temperature)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    chunk_size = _check_chunk("chunk_size", chunk_size)
    vocab_chunk_size = _check_chunk("vocab_chunk_size", vocab_chunk_size)
    if labels.dtype != torch.int64:
        labels = labels.long()
    if labels.numel():
        bad = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
        if bool(bad.any()):
            first = labels[bad].flatten()[0].item()
            raise ValueError(f"labels: values must be in [0, {V}) or equal ignore_index={ignore_index}; found {first}")

    out_shape = labels.shape
    hidden2 = hidden.reshape(-1, H)
    if hidden2.stride(-1) != 1:
        hidden2 = hidden2.contiguous()
    labels1 = labels.reshape(-1).contiguous()
    name = _select_backend(hidden.device, backend, hidden.dtype)
    plan = _plan(
        hidden2.shape[0], V, hidden.element_size(), _tile_budget_bytes(hidden.device), chunk_size, vocab_chunk_size
    )
    logp, entropy, _ = LinearTokenLogprobsFunction.apply(
        hidden2, weight, bias, labels1, inv_temp, ignore_index, bool(return_entropy), plan, name
    )
    logp = logp.reshape(out_shape)
    return (logp, entropy.reshape(out_shape)) if return_entropy else logp
