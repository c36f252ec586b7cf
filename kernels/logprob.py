"""Triton kernels for fused token log-probs and entropy (one program per row of logits).

Forward keeps an online (max m, sum s = sum e^(z-m), t = sum e^(z-m)(z-m)) over BLOCK-wide slices of the row, so
the row is read once and nothing of size V is written; backward reads the row again and writes the gradient,
possibly over the logits themselves. Host code: smtpo_fast/ops/logprob.py.
"""

import triton
import triton.language as tl


@triton.jit
def logprob_fwd_kernel(
    logits_ptr, labels_ptr, logp_ptr, entropy_ptr, lse_ptr,
    T, V, stride_b, stride_t, lstride_b, lstride_t,
    inv_temp, ignore_index,
    HAS_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    b = r // T
    t = r % T
    row = logits_ptr + b * stride_b + t * stride_t
    offs = tl.arange(0, BLOCK)
    # One running max for the row; per-lane sums relative to it, so each element costs one exp.
    m = float("-inf")
    s = tl.zeros([BLOCK], tl.float32)
    acc_t = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        # Base-2 units (z * log2 e): exp2 maps straight onto the hardware's ex2.
        z = tl.load(row + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * (inv_temp * 1.4426950408889634)
        new_m = tl.maximum(m, tl.max(z, axis=0))
        # Guard -inf - -inf (row all -inf so far) and 0 * -inf (entries at -inf).
        live = new_m > float("-inf")
        rescale = live & (m > float("-inf"))
        d_old = tl.where(rescale, m - new_m, 0.0)
        alpha = tl.where(rescale, tl.exp2(d_old), 0.0)
        d = tl.where(live, z - new_m, float("-inf"))
        e = tl.where(live, tl.exp2(d), 0.0)
        if HAS_ENTROPY:
            acc_t = alpha * (acc_t + d_old * s) + tl.where(e > 0, e * d, 0.0)
        s = alpha * s + e
        m = new_m
    S = tl.sum(s, axis=0)
    # Back to natural units: lse = ln2 (m + log2 S), H = ln2 (log2 S - t / S).
    log2_s = tl.log2(S)
    lse = 0.6931471805599453 * (m + log2_s)
    tl.store(lse_ptr + r, lse)
    label = tl.load(labels_ptr + b * lstride_b + t * lstride_t)
    ignored = label == ignore_index
    safe = tl.where(ignored, 0, label)
    z_label = tl.load(row + safe).to(tl.float32) * inv_temp
    tl.store(logp_ptr + r, tl.where(ignored, 0.0, z_label - lse))
    if HAS_ENTROPY:
        tl.store(entropy_ptr + r, 0.6931471805599453 * (log2_s - tl.sum(acc_t, axis=0) / S))


@triton.jit
def logprob_bwd_kernel(
    logits_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_entropy_ptr, grad_ptr,
    T, V, stride_b, stride_t, lstride_b, lstride_t, gstride_b, gstride_t,
    inv_temp, ignore_index,
    HAS_GLP: tl.constexpr, HAS_GENT: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    b = r // T
    t = r % T
    row = logits_ptr + b * stride_b + t * stride_t
    grow = grad_ptr + b * gstride_b + t * gstride_t
    lse = tl.load(lse_ptr + r)
    label = tl.load(labels_ptr + b * lstride_b + t * lstride_t)
    ignored = label == ignore_index
    # The host passes a valid per-row buffer for every pointer, so these loads are safe whatever the flags.
    gl = tl.where(ignored, 0.0, tl.load(grad_logp_ptr + r))
    gh = tl.load(grad_entropy_ptr + r)
    H = tl.load(entropy_ptr + r)
    offs = tl.arange(0, BLOCK)
    # Each slice is read before it is written, and every slice holds the label at most once: the label's
    # onehot term is added in the slice that contains it, from the value just loaded (safe in place).
    for start in range(0, V, BLOCK):
        idx = start + offs
        mask = idx < V
        x = tl.load(row + idx, mask=mask, other=0.0).to(tl.float32)
        d = x * inv_temp - lse
        p = tl.exp(d)
        g = tl.zeros([BLOCK], tl.float32)
        if HAS_GLP:
            g = g + gl * (tl.where(idx == label, 1.0, 0.0) - p)
        if HAS_GENT:
            g = g - gh * tl.where(p > 0, p * (d + H), 0.0)
        tl.store(grow + idx, (g * inv_temp).to(grad_ptr.dtype.element_ty), mask=mask)
