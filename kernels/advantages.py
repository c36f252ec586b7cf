"""Triton kernels for the RL math ops (host code: smtpo_fast/ops/advantages.py and policy_loss.py).

GAE / returns: one program per row, an associative scan of affine maps over BLOCK_T-token chunks from the row's end
(parallel within the row, as the CUDA kernel). Turn rewards: one program per BLOCK_B rows walking their turns from
last to first. Group advantages: one program per
group over its CSR member list. PPO loss: one program per row (forward: per-row partial sums) or per row and
BLOCK-wide slice (backward). All arithmetic in float64, as in the CPU and CUDA kernels.
"""

import triton
import triton.language as tl


@triton.jit
def _compose_right_first(ga, gb, gc, gd, ge, fa, fb, fc, fd, fe):
    # Combine of a forward scan over tokens loaded last-to-first: (g, f) = (the maps of the tokens to the right,
    # already combined; the next token to the left). Returns f after g, as compose() in csrc/advantages_math.h.
    return fa * ga, fa * gb + fb * gc, fc * gc, fa * gd + fb * ge + fd, fc * ge + fe


@triton.jit
def rl_scan_kernel(
    rewards_ptr, values_ptr, mask_ptr, adv_ptr, ret_ptr,
    T, params_ptr,
    IS_GAE: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # One program per row, BLOCK_T tokens at a time from the row's end. Each token is an affine map of the state
    # (running advantage A, next valid value nv) carried from the right (identity when masked); an inclusive scan of
    # the maps gives, at each token, the composite of it and every token to its right in the chunk, which applied to
    # the chunk's incoming state is the state right after that token. Scalars arrive as a float64 tensor
    # [gamma, lam]: a Python float argument would be rounded to float32.
    row = tl.program_id(0).to(tl.int64)
    gamma = tl.load(params_ptr)
    gl = gamma * tl.load(params_ptr + 1)
    offs = tl.arange(0, BLOCK_T)
    state_a = gamma * 0.0  # float64 zeros
    state_nv = gamma * 0.0
    for done in range(0, T, BLOCK_T):
        t = T - 1 - done - offs  # last token first
        inb = t >= 0
        p = row * T + t
        m = (tl.load(mask_ptr + p, mask=inb, other=0) != 0) & inb
        r = tl.load(rewards_ptr + p, mask=m, other=0.0).to(tl.float64)
        zero = tl.zeros([BLOCK_T], tl.float64)
        one = zero + 1.0
        if IS_GAE:
            v = tl.load(values_ptr + p, mask=m, other=0.0).to(tl.float64)
            ma = tl.where(m, gl, one)
            mb = tl.where(m, gamma, zero)
            mc = tl.where(m, zero, one)
            md = tl.where(m, r - v, zero)
            me = tl.where(m, v, zero)
        else:
            ma = tl.where(m, gamma, one)
            mb = zero
            mc = one
            md = tl.where(m, r, zero)
            me = zero
        ca, cb, cc, cd, ce = tl.associative_scan((ma, mb, mc, md, me), 0, _compose_right_first)
        a_after = ca * state_a + cb * state_nv + cd
        nv_after = cc * state_nv + ce
        if IS_GAE:
            tl.store(adv_ptr + p, tl.where(m, a_after, 0.0).to(adv_ptr.dtype.element_ty), mask=inb)
            tl.store(ret_ptr + p, tl.where(m, a_after + v, 0.0).to(ret_ptr.dtype.element_ty), mask=inb)
        else:
            tl.store(ret_ptr + p, tl.where(m, a_after, 0.0).to(ret_ptr.dtype.element_ty), mask=inb)
        # The last scan position holds the whole chunk (out-of-row positions are identities).
        state_a = tl.sum(tl.where(offs == BLOCK_T - 1, a_after, 0.0), axis=0)
        state_nv = tl.sum(tl.where(offs == BLOCK_T - 1, nv_after, 0.0), axis=0)


@triton.jit
def group_adv_kernel(
    rewards_ptr, order_ptr, offsets_ptr, params_ptr, out_ptr,
    IS_RLOO: tl.constexpr, SCALE: tl.constexpr, DDOF: tl.constexpr, BLOCK: tl.constexpr,
):
    # params: float64 [eps, batch std].
    g = tl.program_id(0).to(tl.int64)
    eps = tl.load(params_ptr)
    lo = tl.load(offsets_ptr + g)
    hi = tl.load(offsets_ptr + g + 1)
    n = hi - lo
    nf = n.to(tl.float64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float64)
    for start in range(lo, hi, BLOCK):
        k = start + offs
        idx = tl.load(order_ptr + k, mask=k < hi, other=0)
        acc += tl.load(rewards_ptr + idx, mask=k < hi, other=0.0).to(tl.float64)
    # A group of one has mean 0 (verl): GRPO gives r / (1 + eps), RLOO keeps r.
    mean = tl.where(n > 1, tl.sum(acc, axis=0) / nf, 0.0)
    if IS_RLOO:
        factor = tl.where(n > 1, nf / tl.maximum(nf - 1.0, 1.0), 1.0)
        for start in range(lo, hi, BLOCK):
            k = start + offs
            idx = tl.load(order_ptr + k, mask=k < hi, other=0)
            x = tl.load(rewards_ptr + idx, mask=k < hi, other=0.0).to(tl.float64)
            tl.store(out_ptr + idx, ((x - mean) * factor).to(out_ptr.dtype.element_ty), mask=k < hi)
    else:
        denom = 1.0
        if SCALE == 0:
            sq = tl.zeros([BLOCK], tl.float64)
            for start in range(lo, hi, BLOCK):
                k = start + offs
                idx = tl.load(order_ptr + k, mask=k < hi, other=0)
                d = tl.load(rewards_ptr + idx, mask=k < hi, other=0.0).to(tl.float64) - mean
                sq += tl.where(k < hi, d * d, 0.0)
            group_std = tl.where(n > 1, tl.sqrt(tl.sum(sq, axis=0) / tl.maximum(nf - DDOF, 1.0)), 1.0)
            denom = group_std + eps
        if SCALE == 1:
            denom = tl.load(params_ptr + 1) + eps
        for start in range(lo, hi, BLOCK):
            k = start + offs
            idx = tl.load(order_ptr + k, mask=k < hi, other=0)
            d = tl.load(rewards_ptr + idx, mask=k < hi, other=0.0).to(tl.float64) - mean
            if SCALE != 2:
                d = d / denom
            tl.store(out_ptr + idx, d.to(out_ptr.dtype.element_ty), mask=k < hi)


@triton.jit
def turn_rewards_kernel(tr_ptr, end_ptr, out_ptr, B, K, T, params_ptr, BLOCK_B: tl.constexpr):
    gamma_turn = tl.load(params_ptr)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = rows < B
    running = tl.zeros([BLOCK_B], tl.float64)
    for i in range(0, K):
        k = K - 1 - i
        end = tl.load(end_ptr + rows * K + k, mask=live, other=-1)
        valid = end >= 0
        r = tl.load(tr_ptr + rows * K + k, mask=live, other=0.0).to(tl.float64)
        running = tl.where(valid, r + gamma_turn * running, running)
        tl.store(out_ptr + rows * T + end, running.to(out_ptr.dtype.element_ty), mask=live & valid)


@triton.jit
def _ppo_token(logp, old, adv, clip_low, clip_high, dual_clip, HAS_DUAL: tl.constexpr):
    # Same conventions as csrc/advantages_math.h (verl's compute_policy_loss).
    raw = logp - old
    # Clamps as selects, not tl.minimum/maximum (which drop NaN): a NaN input must reach the loss.
    d = tl.where(raw < -20.0, -20.0, tl.where(raw > 20.0, 20.0, raw))
    in_clamp = (raw >= -20.0) & (raw <= 20.0)
    ratio = tl.exp(d)
    rc = tl.where(ratio < 1.0 - clip_low, 1.0 - clip_low, tl.where(ratio > 1.0 + clip_high, 1.0 + clip_high, ratio))
    l1 = -adv * ratio
    l2 = -adv * rc
    clipped = l2 > l1
    loss = tl.where(clipped, l2, l1)
    g = tl.where(clipped, 0.0, -adv * ratio)
    dual = clipped != clipped  # all False, same shape
    if HAS_DUAL:
        l3 = -adv * dual_clip
        dual = (adv < 0.0) & (loss > l3)
        loss = tl.where(dual, l3, loss)
        g = tl.where(dual, 0.0, g)
    g = tl.where(in_clamp, g, 0.0)
    return loss, g, clipped, dual, -d


@triton.jit
def ppo_fwd_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, stats_ptr, T, params_ptr,
    HAS_DUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    # params: float64 [clip_low, clip_high, dual_clip].
    clip_low = tl.load(params_ptr)
    clip_high = tl.load(params_ptr + 1)
    dual_clip = tl.load(params_ptr + 2)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    n = tl.zeros([BLOCK], tl.float64)
    loss_sum = tl.zeros([BLOCK], tl.float64)
    clip_sum = tl.zeros([BLOCK], tl.float64)
    kl_sum = tl.zeros([BLOCK], tl.float64)
    dual_sum = tl.zeros([BLOCK], tl.float64)
    for start in range(0, T, BLOCK):
        t = start + offs
        inb = t < T
        p = row * T + t
        m = (tl.load(mask_ptr + p, mask=inb, other=0) != 0) & inb
        lp = tl.load(logp_ptr + p, mask=m, other=0.0).to(tl.float64)
        old = tl.load(old_ptr + p, mask=m, other=0.0).to(tl.float64)
        adv = tl.load(adv_ptr + p, mask=m, other=0.0).to(tl.float64)
        loss, g, clipped, dual, nkl = _ppo_token(lp, old, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
        n += tl.where(m, 1.0, 0.0)
        loss_sum += tl.where(m, loss, 0.0)
        clip_sum += tl.where(m & clipped, 1.0, 0.0)
        kl_sum += tl.where(m, nkl, 0.0)
        dual_sum += tl.where(m & dual, 1.0, 0.0)
    s = stats_ptr + row * 5
    tl.store(s + 0, tl.sum(n, axis=0))
    tl.store(s + 1, tl.sum(loss_sum, axis=0))
    tl.store(s + 2, tl.sum(clip_sum, axis=0))
    tl.store(s + 3, tl.sum(kl_sum, axis=0))
    tl.store(s + 4, tl.sum(dual_sum, axis=0))


@triton.jit
def ppo_bwd_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, row_scale_ptr, grad_ptr, T, params_ptr,
    HAS_DUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    clip_low = tl.load(params_ptr)
    clip_high = tl.load(params_ptr + 1)
    dual_clip = tl.load(params_ptr + 2)
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = t < T
    p = row * T + t
    m = (tl.load(mask_ptr + p, mask=inb, other=0) != 0) & inb
    lp = tl.load(logp_ptr + p, mask=m, other=0.0).to(tl.float64)
    old = tl.load(old_ptr + p, mask=m, other=0.0).to(tl.float64)
    adv = tl.load(adv_ptr + p, mask=m, other=0.0).to(tl.float64)
    _, g, _, _, _ = _ppo_token(lp, old, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
    scale = tl.load(row_scale_ptr + row)
    tl.store(grad_ptr + p, tl.where(m, scale * g, 0.0).to(grad_ptr.dtype.element_ty), mask=inb)


@triton.jit
def kl_penalty_kernel(
    logp_ptr, ref_ptr, grad_out_ptr, out_ptr, n,
    KIND: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):
    # Same conventions as kl_token() in csrc/advantages_math.h; clamps as selects so NaN flows through.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    d = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float64) - tl.load(ref_ptr + offs, mask=inb,
                                                                                other=0.0).to(tl.float64)
    if KIND == 0:
        value = d
        slope = d * 0.0 + 1.0
    elif KIND == 1:
        value = 0.5 * d * d
        slope = d
    else:
        x_raw = -d
        x = tl.where(x_raw < -20.0, -20.0, tl.where(x_raw > 20.0, 20.0, x_raw))
        ex = tl.exp(x)
        y = ex - x - 1.0
        value = tl.where(y < -10.0, -10.0, tl.where(y > 10.0, 10.0, y))
        passes = (x_raw >= -20.0) & (x_raw <= 20.0) & (y >= -10.0) & (y <= 10.0)
        slope = tl.where(passes, 1.0 - ex, 0.0)
    if BACKWARD:
        g = tl.load(grad_out_ptr + offs, mask=inb, other=0.0).to(tl.float64)
        tl.store(out_ptr + offs, (g * slope).to(out_ptr.dtype.element_ty), mask=inb)
    else:
        tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=inb)
