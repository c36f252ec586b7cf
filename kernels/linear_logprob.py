"""Triton kernel for the fused LM-head log-prob forward: matmul + online softmax, logits never leave registers.

One program owns BLOCK_M rows of hidden and one split of the vocabulary. For each BLOCK_N-wide slice of its split it
computes the [BLOCK_M, BLOCK_N] logits tile with tl.dot over H, and folds the tile into per-row running statistics
(max m, s = sum e^(z-m), t = sum e^(z-m)(z-m)) and the label's logit, as kernels/logprob.py does along one row.
Each split writes its four statistics per row; the host merges the splits (a few [splits, N] tensors). Backward is
chunked matmul + the foundation's softmax-gradient kernel (smtpo_fast/ops/linear_logprob.py).
"""

import torch
import triton
import triton.language as tl


# Sizes only bound loops and masks: one compiled kernel serves every N and V (strides stay specialised, for
# aligned vector loads).
@triton.jit(do_not_specialize=["N", "V", "ignore_index", "cols_per_split"])
def linear_logprob_fwd_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, m_ptr, s_ptr, t_ptr, zl_ptr,
    N, V, H, stride_h, stride_w, inv_temp, ignore_index, cols_per_split,
    HAS_BIAS: tl.constexpr, HAS_ENTROPY: tl.constexpr, FP32_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    label = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    v_start = split.to(tl.int64) * cols_per_split
    v_end = tl.minimum(v_start + cols_per_split, V)
    ks0 = tl.arange(0, BLOCK_K)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    t = tl.zeros([BLOCK_M], tl.float32)
    zl = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(v_start, v_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < v_end
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + ks0
            a_ptrs = h_ptr + rows[:, None] * stride_h + ks[None, :]
            b_ptrs = w_ptr + cols[None, :] * stride_w + ks[:, None]
            if EVEN_K:  # no mask along H: Hopper's software pipeliner then overlaps these loads with the MMA
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
            else:
                k_ok = ks < H
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST_DOT:  # the interpreter's tl.dot reads bfloat16 bits as integers
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if FP32_DOT:
                # float32 inputs get float32 products (no TF32), like torch's default matmul.
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        zl += tl.sum(tl.where(cols[None, :] == label[:, None], z, 0.0), axis=1)
        new_m = tl.maximum(m, tl.max(z, axis=1))
        # Guard -inf - -inf (rows all -inf so far) and 0 * -inf (entries at -inf), as logprob.py does.
        live = new_m > float("-inf")
        rescale = live & (m > float("-inf"))
        d_old = tl.where(rescale, m - new_m, 0.0)
        alpha = tl.where(rescale, tl.exp(d_old), 0.0)
        d = tl.where(live[:, None], z - new_m[:, None], float("-inf"))
        e = tl.exp(d)
        if HAS_ENTROPY:
            t = alpha * (t + d_old * s) + tl.sum(tl.where(e > 0, e * d, 0.0), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = new_m
    out = split.to(tl.int64) * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(zl_ptr + out, zl, mask=row_ok)
    if HAS_ENTROPY:
        tl.store(t_ptr + out, t, mask=row_ok)


def launch_config(N: int, V: int, H: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Tile sizes, warps and the vocabulary split so that the grid fills the GPU even for few rows."""
    if device.type == "cuda":
        wide = dtype != torch.float32
        cfg = dict(BLOCK_M=128 if wide else 64, BLOCK_N=128 if wide else 64, BLOCK_K=64 if wide else 32,
                   num_warps=8 if wide else 4, num_stages=3, UPCAST_DOT=False)
        target_programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: few large programs run fastest; several splits keep the merge exercised
        cfg = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=1, UPCAST_DOT=True)
        target_programs = 4 * max(1, triton.cdiv(N, 32))
    row_blocks = max(1, triton.cdiv(N, cfg["BLOCK_M"]))
    n_tiles = triton.cdiv(V, cfg["BLOCK_N"])
    splits = max(1, min(n_tiles, triton.cdiv(target_programs, row_blocks)))
    cols = triton.cdiv(n_tiles, splits) * cfg["BLOCK_N"]
    cfg["COLS_PER_SPLIT"] = cols
    cfg["EVEN_K"] = H % cfg["BLOCK_K"] == 0
    cfg["SPLITS"] = triton.cdiv(V, cols)
    return cfg
