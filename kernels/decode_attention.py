"""Triton kernel for one-query-token attention over a static KV cache (host code: smtpo_fast/ops/attention.py).

One program per (row, query head): BLOCK_N cache positions at a time, online softmax in float32, grouped-query heads
read key/value head ``h // G``; the loop stops at the row's length, so short rows cost little in a long cache.
"""

import triton
import triton.language as tl


@triton.jit
def decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, lengths_ptr, rows_ptr, out_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh,
    G, D, scale,
    HAS_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    L = tl.load(lengths_ptr + b).to(tl.int32)
    if HAS_ROWS:
        row = tl.load(rows_ptr + b).to(tl.int64)
    else:
        row = b
    hk = h // G
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d, mask=dmask, other=0.0).to(tl.float32) * scale
    k_base = k_ptr + row * stride_kb + hk * stride_kh
    v_base = v_ptr + row * stride_vb + hk * stride_vh
    m = float("-inf")
    s_sum = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < L
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        scores = tl.where(nmask, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp(m - m_new)  # m = -inf on the first block: alpha = 0
        p = tl.exp(scores - m_new)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        s_sum = s_sum * alpha + tl.sum(p, axis=0)
        m = m_new
    out = tl.where(s_sum > 0, acc / tl.where(s_sum > 0, s_sum, 1.0), 0.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=dmask)
