"""Triton kernel for fused sampling with temperature, top-k, top-p and min-p (host code: smtpo_fast/ops/sampling.py).

One program per row, BLOCK-wide passes over the vocabulary. The top-k value and the top-p cutoff are found by a
32-step bisection over order-preserving int32 keys of the float32 logits (each step one pass: a count, or the mass
above the candidate), so nothing is sorted. The draw is Gumbel-max with the counter-based hash of (seed, row, column)
that the torch backend uses too.
"""

import triton
import triton.language as tl


@triton.jit
def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    h = h ^ (h >> 16)
    return h


@triton.jit
def _key(x):
    i = (x + 0.0).to(tl.int32, bitcast=True)
    return tl.where(i < 0, i ^ 0x7FFFFFFF, i)


@triton.jit
def _key_value(k):
    i = tl.where(k < 0, k ^ 0x7FFFFFFF, k)
    return i.to(tl.float32, bitcast=True)


@triton.jit
def _load_row(row_ptr, idx, V, inv_temp):
    return tl.load(row_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_temp


@triton.jit
def sample_kernel(
    logits_ptr, seed_ptr, tokens_ptr, logprobs_ptr, cutoff_ptr,
    V, stride_b, inv_temp, top_k, top_p, min_p,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + r * stride_b
    offs = tl.arange(0, BLOCK)
    NEG_INF = float("-inf")
    BIG = 2147483647

    # Pass 1: max, smallest finite key, number of finite entries.
    m = NEG_INF
    kmin = BIG
    n_finite = 0
    for start in range(0, V, BLOCK):
        x = _load_row(row_ptr, start + offs, V, inv_temp)
        fin = x > NEG_INF
        m = tl.maximum(m, tl.max(x, axis=0))
        kmin = tl.minimum(kmin, tl.min(tl.where(fin, _key(x), BIG), axis=0))
        n_finite += tl.sum(fin.to(tl.int32), axis=0)
    m_key = _key(m)
    cut = NEG_INF
    cut_key = kmin

    if HAS_TOP_K:
        # Largest key t with count(key >= t) >= k, i.e. the k-th largest value.
        lo = kmin.to(tl.int64)
        hi = m_key.to(tl.int64) + 1
        for _ in range(33):
            mid = lo + (hi - lo) // 2
            cnt = 0
            for start in range(0, V, BLOCK):
                x = _load_row(row_ptr, start + offs, V, inv_temp)
                cnt += tl.sum((_key(x).to(tl.int64) >= mid).to(tl.int32), axis=0)
            go = hi - lo > 1
            lo = tl.where(go & (cnt >= top_k), mid, lo)
            hi = tl.where(go & (cnt < top_k), mid, hi)
        use_k = top_k < n_finite
        cut_key = tl.where(use_k, lo.to(tl.int32), kmin)
        cut = tl.where(use_k, _key_value(lo.to(tl.int32)), NEG_INF)

    if HAS_TOP_P:
        Z = 0.0
        for start in range(0, V, BLOCK):
            x = _load_row(row_ptr, start + offs, V, inv_temp)
            keep = (_key(x) >= cut_key) & (x > NEG_INF)
            Z += tl.sum(tl.where(keep, tl.exp(x - m), 0.0), axis=0)
        target = top_p * Z
        # Smallest key t with mass(key > t) < target.
        lo = cut_key.to(tl.int64) - 1
        hi = m_key.to(tl.int64)
        for _ in range(33):
            mid = lo + (hi - lo) // 2
            mass = 0.0
            for start in range(0, V, BLOCK):
                x = _load_row(row_ptr, start + offs, V, inv_temp)
                kx = _key(x)
                above = (kx >= cut_key) & (x > NEG_INF) & (kx.to(tl.int64) > mid)
                mass += tl.sum(tl.where(above, tl.exp(x - m), 0.0), axis=0)
            go = hi - lo > 1
            hi = tl.where(go & (mass < target), mid, hi)
            lo = tl.where(go & (mass >= target), mid, lo)
        cut = tl.maximum(cut, _key_value(hi.to(tl.int32)))

    if HAS_MIN_P:
        cut = tl.maximum(cut, m + tl.log(min_p))

    # Final pass: normaliser of the kept set and Gumbel-max draw over it.
    seed = tl.load(seed_ptr)
    s_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    s_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    row_key = _fmix32(s_lo ^ _fmix32(s_hi ^ _fmix32(r.to(tl.uint32) + 0x9E3779B9)))
    Z = 0.0
    best = NEG_INF
    best_idx = 0
    best_x = NEG_INF
    for start in range(0, V, BLOCK):
        idx = start + offs
        x = _load_row(row_ptr, idx, V, inv_temp)
        keep = (x >= cut) & (x > NEG_INF)
        Z += tl.sum(tl.where(keep, tl.exp(x - m), 0.0), axis=0)
        c = idx.to(tl.uint32) * 0x27D4EB2F + 0x165667B1
        bits = _fmix32(row_key ^ _fmix32(c))
        u = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        score = tl.where(keep, x - tl.log(-tl.log(u)), NEG_INF)
        blk_best = tl.max(score, axis=0)
        blk_idx = tl.argmax(score, axis=0)
        blk_x = tl.sum(tl.where(offs == blk_idx, x, 0.0), axis=0)
        better = blk_best > best
        best_idx = tl.where(better, start + blk_idx, best_idx)
        best_x = tl.where(better, blk_x, best_x)
        best = tl.where(better, blk_best, best)
    tl.store(tokens_ptr + r, best_idx.to(tl.int64))
    tl.store(logprobs_ptr + r, best_x - m - tl.log(Z))
    tl.store(cutoff_ptr + r, tl.where(m > NEG_INF, cut, float("inf")))
