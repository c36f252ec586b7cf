"""One-query-token attention over a static KV cache (``decode_attention``) and the matching cache write
(``kv_cache_append``), the two attention pieces of the rollout engine's decode step.

Order as in logprob.py: the reference (the definition), host functions per backend, the torch.library op, the public
functions. Kernels: csrc/isa/decode_attention_isa.cpp (CPU), csrc/decode_attention_cuda.cu (CUDA, split-K over the
sequence as flash-decoding does), kernels/decode_attention.py (Triton).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _ext
from ._checks import check_same_device, check_tensor

ATTN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)

# CUDA split-K: each block of the first pass covers this many cache positions (csrc/decode_attention_cuda.cu).
CUDA_SPLIT_CHUNK = 256
CUDA_MAX_SPLITS = 64


# ----------------------------------------------------------------------------------------------------------------
# Reference (the definition of the op)
# ----------------------------------------------------------------------------------------------------------------
def decode_attention_reference(q, k_cache, v_cache, lengths, *, scale=None, cache_rows=None):
    """SDPA of one query per row against the first ``lengths[b]`` cache positions of cache row ``cache_rows[b]``.

    Computes in float64 for float64 input, float32 otherwise; rows with length 0 give zeros.
    """
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, Hq, D = q.shape
    if cache_rows is not None:
        k_cache = k_cache.index_select(0, cache_rows.long())
        v_cache = v_cache.index_select(0, cache_rows.long())
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    scale = D ** -0.5 if scale is None else scale
    valid = torch.arange(S, device=q.device)[None, :] < lengths.long()[:, None]  # [B, S]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(work).unsqueeze(2),                       # [B, Hq, 1, D]
        k_cache.to(work), v_cache.to(work),            # [B, Hkv, S, D]
        attn_mask=valid[:, None, None, :],
        scale=scale,
        enable_gqa=Hq != Hkv,
    ).squeeze(2)
    out = torch.where((lengths.long() > 0)[:, None, None], out, torch.zeros((), dtype=work, device=q.device))
    return out.to(q.dtype)


def kv_cache_append_reference(k_cache, v_cache, k_new, v_new, cache_rows, positions):
    """``k_cache[cache_rows[i], :, positions[i]] = k_new[i]`` (and the same for v), in place."""
    rows, pos = cache_rows.long(), positions.long()
    k_cache[rows, :, pos] = k_new.to(k_cache.dtype)
    v_cache[rows, :, pos] = v_new.to(v_cache.dtype)


def kv_cache_flat_index(cache_rows: torch.Tensor, positions: torch.Tensor, num_kv_heads: int,
                        seq_len: int) -> torch.Tensor:
    """``[N * Hkv]`` int64 rows of a ``[Bc, Hkv, S, D]`` cache viewed as ``[Bc * Hkv * S, D]``: where token ``i``'s
    head ``h`` goes (``kv_cache_write``'s index; a caller appending to many layers builds it once)."""
    heads = torch.arange(num_kv_heads, device=cache_rows.device)
    return ((cache_rows.long()[:, None] * num_kv_heads + heads) * seq_len + positions.long()[:, None]).reshape(-1)


def kv_cache_write(k_cache, v_cache, k_new, v_new, flat_index) -> None:
    """``kv_cache_append_reference``'s writes, unchecked: one ``index_copy_`` per buffer into its flat view (about
    10x cheaper on the CPU than ``index_put_`` over two dimensions). Caches must be contiguous."""
    D = k_cache.shape[-1]
    k_cache.view(-1, D).index_copy_(0, flat_index, k_new.reshape(-1, D).to(k_cache.dtype))
    v_cache.view(-1, D).index_copy_(0, flat_index, v_new.reshape(-1, D).to(v_cache.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Host functions per backend
# ----------------------------------------------------------------------------------------------------------------
def _rows_arg(cache_rows, B, device):
    """Cache row of each query row as int64 (identity when not given)."""
    if cache_rows is None:
        return None
    return cache_rows if cache_rows.dtype == torch.int64 else cache_rows.long()


def _forward_native(q, k_cache, v_cache, lengths, scale, cache_rows, device_kind):
    B, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Hq == 0:
        return out
    lengths = lengths if lengths.dtype == torch.int64 else lengths.long()
    rows = _rows_arg(cache_rows, B, q.device)
    C = _ext.native()
    args = (
        q.data_ptr(), q.stride(0), q.stride(1),
        k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        lengths.data_ptr(), rows.data_ptr() if rows is not None else 0,
        out.data_ptr(), _ext.DTYPE_CODES[q.dtype], B, Hq, Hkv, S, D, float(scale),
    )
    if device_kind == "cuda":
        splits = max(1, min(CUDA_MAX_SPLITS, -(-S // CUDA_SPLIT_CHUNK)))
        work = torch.empty((B, Hq, splits, D + 2), dtype=torch.float32, device=q.device)
        C.decode_attention_cuda(*args, work.data_ptr(), splits, _ext.stream_of(q))
    else:
        C.decode_attention_cpu(*args)
    return out


def _triton_block_n(S: int) -> int:
    return 16 if _ext.triton_interpreted() else 64


def _forward_triton(q, k_cache, v_cache, lengths, scale, cache_rows):
    K = _ext.triton_kernels().decode_attention
    B, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Hq == 0:
        return out
    rows = _rows_arg(cache_rows, B, q.device)
    block_d = 1 << max(0, (D - 1).bit_length())
    K.decode_attention_kernel[(B, Hq)](
        q, k_cache, v_cache, lengths, rows if rows is not None else lengths, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        Hq // Hkv, D, float(scale),
        HAS_ROWS=rows is not None, BLOCK_N=_triton_block_n(S), BLOCK_D=block_d,
    )
    return out


def _forward_torch(q, k_cache, v_cache, lengths, scale, cache_rows):
    return decode_attention_reference(q, k_cache, v_cache, lengths, scale=scale, cache_rows=cache_rows)


@torch.library.custom_op("smtpo_fast::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
    cache_rows: Optional[torch.Tensor], scale: float, backend: str,
) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _forward_native(q, k_cache, v_cache, lengths, scale, cache_rows, backend)
    if backend == "triton":
        return _forward_triton(q, k_cache, v_cache, lengths, scale, cache_rows)
    return _forward_torch(q, k_cache, v_cache, lengths, scale, cache_rows)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, lengths, cache_rows, scale, backend):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


# ----------------------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------------------
def check_decode_attention_args(q, k_cache, v_cache, lengths, cache_rows=None):
    """Shape / dtype / device checks of ``decode_attention`` (no values are read: no device synchronisation)."""
    check_tensor("q", q, dtypes=ATTN_DTYPES, ndim=(3,))
    check_tensor("k_cache", k_cache, dtypes=(q.dtype,), ndim=(4,))
    check_tensor("v_cache", v_cache, dtypes=(q.dtype,), ndim=(4,))
    check_tensor("lengths", lengths, dtypes=INDEX_DTYPES, ndim=(1,))
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lengths, cache_rows=cache_rows)
    B, Hq, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} must equal k_cache's {tuple(k_cache.shape)}")
    Bc, Hkv, S, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"k_cache: head dim {Dk} must equal q's head dim {D}")
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"q: query heads ({Hq}) must be a multiple of k_cache's key/value heads ({Hkv})")
    if lengths.shape[0] != B:
        raise ValueError(f"lengths: expected shape ({B},) (one length per query row), got {tuple(lengths.shape)}")
    if cache_rows is None:
        if Bc != B:
            raise ValueError(f"k_cache: batch {Bc} must equal q's batch {B} (or pass cache_rows)")
    else:
        check_tensor("cache_rows", cache_rows, dtypes=INDEX_DTYPES, ndim=(1,))
        if cache_rows.shape[0] != B:
            raise ValueError(f"cache_rows: expected shape ({B},), got {tuple(cache_rows.shape)}")
    if q.stride(-1) != 1:
        raise ValueError("q: the head dim must have unit stride")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache / v_cache: the head dim must have unit stride")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float | None = None,
    cache_rows: torch.Tensor | None = None,
    check_values: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of one query token per row over a static KV cache with ragged valid lengths (decode step).

    Row ``b`` attends to positions ``[0, lengths[b])`` of cache row ``cache_rows[b]`` (``b`` when not given);
    query head ``h`` reads key/value head ``h // (Hq // Hkv)`` (grouped-query attention). Accumulates in float32
    (float64 on the torch backend for float64 input). Rows with length 0 give zeros.

    Args:
        q: ``[B, Hq, D]`` float32 | bfloat16 | float16 | float64, unit stride along D.
        k_cache: ``[Bc, Hkv, S, D]`` same dtype as ``q``, unit stride along D (any other strides); ``Hq % Hkv == 0``.
        v_cache: ``[Bc, Hkv, S, D]`` same dtype and shape as ``k_cache``.
        lengths: ``[B]`` int64 | int32, each in ``[0, S]``.
        scale: softmax scale, default ``D ** -0.5``.
        cache_rows: ``[B]`` int64 | int32 rows of the cache, each in ``[0, Bc)``; default ``arange(B)`` (Bc == B).
        check_values: also check the values of ``lengths`` / ``cache_rows`` (reads them: a device sync on CUDA).
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one.

    Returns:
        ``[B, Hq, D]`` in ``q``'s dtype.
    """
    check_decode_attention_args(q, k_cache, v_cache, lengths, cache_rows)
    S = k_cache.shape[2]
    if check_values and lengths.numel():
        if bool(((lengths < 0) | (lengths > S)).any()):
            raise ValueError(f"lengths: values must be in [0, {S}]")
        if cache_rows is not None and bool(((cache_rows < 0) | (cache_rows >= k_cache.shape[0])).any()):
            raise ValueError(f"cache_rows: values must be in [0, {k_cache.shape[0]})")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    name = _ext.select("decode_attention", q.device, backend, q.dtype, "q")
    return torch.ops.smtpo_fast.decode_attention(q, k_cache, v_cache, lengths, cache_rows, scale, name)


def kv_cache_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_rows: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Write new keys/values into a static KV cache in place: ``k_cache[cache_rows[i], :, positions[i]] = k_new[i]``.

    One indexed write for all ``N`` tokens (a whole ragged prefill or one decode step), so the cache never grows or
    moves, and the call is capturable in a CUDA graph. Every backend uses torch's ``index_put_`` (already one fused
    scatter kernel on each device: ``index_copy_`` into the flat view of contiguous caches); there is no separate
    kernel for it.

    Args:
        k_cache: ``[Bc, Hkv, S, D]`` float32 | bfloat16 | float16 | float64, written in place.
        v_cache: ``[Bc, Hkv, S, D]`` same dtype and shape, written in place.
        k_new: ``[N, Hkv, D]`` any float dtype (cast to the cache's).
        v_new: ``[N, Hkv, D]``.
        cache_rows: ``[N]`` int64 | int32 cache row of each token, in ``[0, Bc)``.
        positions: ``[N]`` int64 | int32 position of each token, in ``[0, S)``. Pairs should be distinct
            (duplicates: one of the writes wins).
    """
    check_tensor("k_cache", k_cache, dtypes=ATTN_DTYPES, ndim=(4,))
    check_tensor("v_cache", v_cache, dtypes=(k_cache.dtype,), ndim=(4,))
    check_tensor("k_new", k_new, ndim=(3,))
    check_tensor("v_new", v_new, ndim=(3,))
    check_tensor("cache_rows", cache_rows, dtypes=INDEX_DTYPES, ndim=(1,))
    check_tensor("positions", positions, dtypes=INDEX_DTYPES, ndim=(1,))
    check_same_device(k_cache=k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new, cache_rows=cache_rows,
                      positions=positions)
    N = k_new.shape[0]
    if k_new.shape != (N, k_cache.shape[1], k_cache.shape[3]) or v_new.shape != k_new.shape:
        raise ValueError(
            f"k_new / v_new: expected shape ({N}, {k_cache.shape[1]}, {k_cache.shape[3]}), "
            f"got {tuple(k_new.shape)} / {tuple(v_new.shape)}"
        )
    if cache_rows.shape[0] != N or positions.shape[0] != N:
        raise ValueError(f"cache_rows / positions: expected shape ({N},), got {tuple(cache_rows.shape)} / "
                         f"{tuple(positions.shape)}")
    if k_cache.is_contiguous() and v_cache.is_contiguous():
        kv_cache_write(k_cache, v_cache, k_new, v_new,
                       kv_cache_flat_index(cache_rows, positions, k_cache.shape[1], k_cache.shape[2]))
    else:
        kv_cache_append_reference(k_cache, v_cache, k_new, v_new, cache_rows, positions)
