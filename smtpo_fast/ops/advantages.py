"""Advantages and returns for RL fine-tuning: ``grpo_advantages``, ``rloo_advantages``, ``gae``,
``discounted_returns``, ``turn_rewards_to_tokens``, ``masked_mean``, ``masked_whiten``.

Order as in logprob.py: the torch references (the definitions: readable, vectorised over the batch), the host
functions of each backend, the ``torch.library`` ops that dispatch to them, then the public functions. Kernels:
csrc/advantages_cpu.cpp (CPU, OpenMP over rows), csrc/advantages_cuda.cu (CUDA: GAE and returns as a parallel
affine-map scan within each row), kernels/advantages.py (Triton).

Conventions shared by every op here:

* Values (rewards, values, turn rewards) are float32 or float64; bfloat16/float16 are widened to float32. Outputs
  have the widened input dtype (float32, or float64 for float64 input). Every backend accumulates in float64.
* Masks are ``torch.bool`` or a floating dtype; a nonzero entry marks a token the policy produced. Integer masks
  are rejected (they are usually token ids passed by mistake).
* NaN in an input is not checked for (that would cost a device sync): it propagates, as documented per op.
"""

from __future__ import annotations

import torch

from .. import _ext
from ._checks import check_same_device, check_tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MASK_DTYPES = (torch.bool, torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SCALES = {"group": 0, "batch": 1, "none": 2}
# Tokens per step of the Triton scan (a power of two); tests lower it to cross chunk boundaries at small T.
TRITON_SCAN_CHUNK = 1024
_STDS = {"unbiased": 1, "biased": 0}


# ----------------------------------------------------------------------------------------------------------------
# Argument helpers
# ----------------------------------------------------------------------------------------------------------------
def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_float(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()


def _check_mask(name: str, mask, shape: torch.Size) -> None:
    check_tensor(name, mask, dtypes=MASK_DTYPES)
    if mask.shape != shape:
        raise ValueError(f"{name}: shape {tuple(mask.shape)} must equal {tuple(shape)}")


def _mask_bool(mask: torch.Tensor) -> torch.Tensor:
    return (mask if mask.dtype == torch.bool else mask != 0).contiguous()


def _check_unit_float(name: str, value, *, lo: float = 0.0, hi: float = 1.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not (lo <= v <= hi):
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {value!r}")
    return v


def _check_2d_pair(**tensors: torch.Tensor) -> torch.Size:
    names = list(tensors)
    for name in names:
        check_tensor(name, tensors[name], dtypes=FLOAT_DTYPES, ndim=(2,))
    shape = tensors[names[0]].shape
    for name in names[1:]:
        if tensors[name].shape != shape:
            raise ValueError(f"{name}: shape {tuple(tensors[name].shape)} must equal {names[0]}'s {tuple(shape)}")
    return shape


def _dense_groups(group_ids: torch.Tensor):
    """Dense ids in [0, G) for arbitrary int64 group ids (sorted unique), and the group sizes."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return inverse.contiguous(), counts


# ----------------------------------------------------------------------------------------------------------------
# References (the definitions of the ops), float64 inside
# ----------------------------------------------------------------------------------------------------------------
def grpo_advantages_reference(rewards, group_ids, eps=1e-6, std="unbiased", scale="group"):
    """Vectorised torch definition of ``grpo_advantages`` (see there for the conventions)."""
    if std is None:
        scale = "none"
    out_dtype = _work_dtype(rewards)
    r = rewards.double()
    inverse, counts = _dense_groups(group_ids)
    n = counts.double()
    sums = torch.zeros(len(counts), dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    mean = torch.where(counts > 1, sums / n, torch.zeros_like(sums))
    dev = r - mean[inverse]
    if scale == "none":
        return dev.to(out_dtype)
    ddof = _STDS[std]
    if scale == "group":
        sq = torch.zeros_like(sums).index_add_(0, inverse, dev * dev)
        group_std = torch.where(counts > 1, (sq / (n - ddof)).sqrt(), torch.ones_like(sq))
        denom = group_std[inverse]
    else:
        denom = r.std(correction=ddof) if r.numel() > 1 else r.new_tensor(1.0)
    return (dev / (denom + eps)).to(out_dtype)


def rloo_advantages_reference(rewards, group_ids):
    """Vectorised torch definition of ``rloo_advantages``."""
    out_dtype = _work_dtype(rewards)
    r = rewards.double()
    inverse, counts = _dense_groups(group_ids)
    n = counts.double()[inverse]
    sums = torch.zeros(len(counts), dtype=torch.float64, device=r.device).index_add_(0, inverse, r)[inverse]
    # r_i - mean of the others = (n r_i - sum) / (n - 1); a group of one keeps its reward (no baseline).
    loo = torch.where(n > 1, (n * r - sums) / (n - 1).clamp_min(1), r)
    return loo.to(out_dtype)


def gae_reference(rewards, values, mask, gamma, lam):
    """Vectorised torch definition of ``gae``: the reverse loop over T, vectorised over B, in float64."""
    out_dtype = _work_dtype(rewards, values)
    r, v, m = rewards.double(), values.double(), _mask_bool(mask)
    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = r.new_zeros(B)
    running = r.new_zeros(B)
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = torch.where(mt, delta + gamma * lam * running, running)
        next_value = torch.where(mt, v[:, t], next_value)
        adv[:, t] = torch.where(mt, running, 0.0)
    ret = torch.where(m, adv + v, 0.0)
    return adv.to(out_dtype), ret.to(out_dtype)


def discounted_returns_reference(rewards, mask, gamma):
    """Vectorised torch definition of ``discounted_returns``."""
    out_dtype = _work_dtype(rewards)
    r, m = rewards.double(), _mask_bool(mask)
    B, T = r.shape
    ret = torch.zeros_like(r)
    running = r.new_zeros(B)
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        running = torch.where(mt, r[:, t] + gamma * running, running)
        ret[:, t] = torch.where(mt, running, 0.0)
    return ret.to(out_dtype)


def turn_rewards_to_tokens_reference(turn_rewards, turn_end, T, gamma_turn=1.0):
    """Vectorised torch definition of ``turn_rewards_to_tokens``."""
    out_dtype = _work_dtype(turn_rewards)
    r = turn_rewards.double()
    B, K = r.shape
    out = torch.zeros(B, T, dtype=torch.float64, device=r.device)
    running = r.new_zeros(B)
    rows = torch.arange(B, device=r.device)
    for k in range(K - 1, -1, -1):
        valid = turn_end[:, k] >= 0
        running = torch.where(valid, r[:, k] + gamma_turn * running, running)
        out[rows[valid], turn_end[valid, k]] = running[valid]
    return out.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# Host functions per backend
# ----------------------------------------------------------------------------------------------------------------
def _scan_native(kind, rewards, values, mask, gamma, lam, device_kind):
    B, T = rewards.shape
    ret = torch.empty_like(rewards)
    adv = torch.empty_like(rewards) if kind == 0 else ret.new_empty((0,))
    if B * T == 0:
        return adv, ret
    C = _ext.native()
    args = (
        kind, _ext.DTYPE_CODES[rewards.dtype], B, T, rewards.data_ptr(), values.data_ptr() if kind == 0 else 0,
        mask.data_ptr(), float(gamma), float(lam), adv.data_ptr() if kind == 0 else 0, ret.data_ptr(),
    )
    if device_kind == "cuda":
        C.rl_scan_cuda(*args, _ext.stream_of(rewards))
    else:
        C.rl_scan_cpu(*args)
    return adv, ret


def _scan_triton(kind, rewards, values, mask, gamma, lam):
    K = _ext.triton_kernels().advantages
    B, T = rewards.shape
    ret = torch.empty_like(rewards)
    adv = torch.empty_like(rewards) if kind == 0 else ret.new_empty((0,))
    if B * T == 0:
        return adv, ret
    block_t = min(TRITON_SCAN_CHUNK, max(16, 1 << (T - 1).bit_length()))
    K.rl_scan_kernel[(B,)](
        rewards, values if kind == 0 else rewards, mask.view(torch.uint8), adv if kind == 0 else ret, ret,
        T, _f64_params(rewards.device, gamma, lam), IS_GAE=kind == 0, BLOCK_T=block_t,
        num_warps=8 if block_t >= 1024 else 4,
    )
    return adv, ret


def _scan_torch(kind, rewards, values, mask, gamma, lam):
    if kind == 0:
        return gae_reference(rewards, values, mask, gamma, lam)
    ret = discounted_returns_reference(rewards, mask, gamma)
    return ret.new_empty((0,)), ret


def _f64_params(device, *values) -> torch.Tensor:
    """Scalars for a Triton kernel as a float64 tensor (a Python float argument would be rounded to float32)."""
    return torch.tensor(values, dtype=torch.float64, device=device)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _group_native(kind, rewards, group_ids, scale, ddof, eps, device_kind):
    out = torch.empty_like(rewards)
    B = rewards.numel()
    if B == 0:
        return out
    C = _ext.native()
    if device_kind == "cuda":
        inverse, counts = _dense_groups(group_ids)
        order, offsets = _csr(inverse, counts)
        C.group_advantages_cuda(kind, _ext.DTYPE_CODES[rewards.dtype], B, counts.numel(), rewards.data_ptr(),
                                inverse.data_ptr(), scale, ddof, float(eps), out.data_ptr(), order.data_ptr(),
                                offsets.data_ptr(), _ext.stream_of(rewards))
    else:
        # G = 0: the CPU kernel numbers the groups itself (no sort, no torch thread pool).
        C.group_advantages_cpu(kind, _ext.DTYPE_CODES[rewards.dtype], B, 0, rewards.data_ptr(), group_ids.data_ptr(),
                               scale, ddof, float(eps), out.data_ptr())
    return out


def _csr(inverse, counts):
    """Members of each group, contiguous: order[offsets[g]:offsets[g + 1]] are the indices in group g."""
    order = torch.argsort(inverse, stable=True)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=inverse.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return order, offsets


def _group_triton(kind, rewards, inverse, counts, scale, ddof, eps):
    K = _ext.triton_kernels().advantages
    out = torch.empty_like(rewards)
    B, G = rewards.numel(), counts.numel()
    if B == 0:
        return out
    order, offsets = _csr(inverse, counts)
    params = _f64_params(rewards.device, eps, 1.0)
    if kind == 0 and scale == 1 and B > 1:
        params[1] = rewards.double().std(correction=ddof)  # TRL's scale_rewards="batch": one std for the batch
    K.group_adv_kernel[(G,)](
        rewards, order, offsets, params, out,
        IS_RLOO=kind == 1, SCALE=scale, DDOF=ddof, BLOCK=64,
    )
    return out


def _group_torch(kind, rewards, group_ids, scale, ddof, eps):
    if kind == 1:
        return rloo_advantages_reference(rewards, group_ids)
    std = {1: "unbiased", 0: "biased"}[ddof]
    return grpo_advantages_reference(rewards, group_ids, eps, std, {v: k for k, v in _SCALES.items()}[scale])


def _turn_native(turn_rewards, turn_end, T, gamma_turn, device_kind):
    B, K = turn_rewards.shape
    # The CPU kernel zeroes its rows itself (one pass); the CUDA kernel writes only the turn ends.
    alloc = torch.zeros if device_kind == "cuda" or K == 0 else torch.empty
    out = alloc(B, T, dtype=turn_rewards.dtype, device=turn_rewards.device)
    if B * K == 0 or T == 0:
        return out
    C = _ext.native()
    args = (_ext.DTYPE_CODES[turn_rewards.dtype], B, K, T, turn_rewards.data_ptr(), turn_end.data_ptr(),
            float(gamma_turn), out.data_ptr())
    if device_kind == "cuda":
        C.turn_rewards_cuda(*args, _ext.stream_of(turn_rewards))
    else:
        C.turn_rewards_cpu(*args)
    return out


def _turn_triton(turn_rewards, turn_end, T, gamma_turn):
    Kmod = _ext.triton_kernels().advantages
    B, K = turn_rewards.shape
    out = torch.zeros(B, T, dtype=turn_rewards.dtype, device=turn_rewards.device)
    if B * K == 0 or T == 0:
        return out
    block_b = 32 if B >= 32 else max(1, 1 << (B - 1).bit_length())
    Kmod.turn_rewards_kernel[(triton_cdiv(B, block_b),)](
        turn_rewards, turn_end, out, B, K, T, _f64_params(out.device, gamma_turn), BLOCK_B=block_b
    )
    return out


# ----------------------------------------------------------------------------------------------------------------
# torch.library ops (so torch.compile traces around the kernels instead of into them)
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("smtpo_fast::rl_scan", mutates_args=())
def _rl_scan(
    kind: int, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend in ("cpu", "cuda"):
        return _scan_native(kind, rewards, values, mask, gamma, lam, backend)
    if backend == "triton":
        return _scan_triton(kind, rewards, values, mask, gamma, lam)
    return _scan_torch(kind, rewards, values, mask, gamma, lam)


@_rl_scan.register_fake
def _(kind, rewards, values, mask, gamma, lam, backend):
    adv = torch.empty_like(rewards) if kind == 0 else rewards.new_empty((0,))
    return adv, torch.empty_like(rewards)


@torch.library.custom_op("smtpo_fast::group_advantages", mutates_args=())
def _group_advantages(
    kind: int, rewards: torch.Tensor, group_ids: torch.Tensor, scale: int, ddof: int, eps: float, backend: str
) -> torch.Tensor:
    if backend == "torch":
        return _group_torch(kind, rewards, group_ids, scale, ddof, eps)
    if backend == "triton":
        inverse, counts = _dense_groups(group_ids)
        return _group_triton(kind, rewards, inverse, counts, scale, ddof, eps)
    return _group_native(kind, rewards, group_ids, scale, ddof, eps, backend)


@_group_advantages.register_fake
def _(kind, rewards, group_ids, scale, ddof, eps, backend):
    return torch.empty_like(rewards)


@torch.library.custom_op("smtpo_fast::turn_rewards_to_tokens", mutates_args=())
def _turn_rewards_op(turn_rewards: torch.Tensor, turn_end: torch.Tensor, T: int, gamma_turn: float,
                     backend: str) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _turn_native(turn_rewards, turn_end, T, gamma_turn, backend)
    if backend == "triton":
        return _turn_triton(turn_rewards, turn_end, T, gamma_turn)
    return turn_rewards_to_tokens_reference(turn_rewards, turn_end, T, gamma_turn)


@_turn_rewards_op.register_fake
def _(turn_rewards, turn_end, T, gamma_turn, backend):
    return turn_rewards.new_empty((turn_rewards.shape[0], T))


# ----------------------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------------------
def _check_groups(rewards, group_ids):
    check_tensor("rewards", rewards, dtypes=FLOAT_DTYPES, ndim=(1,))
    check_tensor("group_ids", group_ids, dtypes=(torch.int64, torch.int32), ndim=(1,))
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids: shape {tuple(group_ids.shape)} must equal rewards' {tuple(rewards.shape)}")
    check_same_device(rewards=rewards, group_ids=group_ids)
    return _as_float(rewards, _work_dtype(rewards)), group_ids.long().contiguous()


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    eps: float = 1e-6,
    std: str | None = "unbiased",
    scale: str = "group",
    backend: str | None = None,
) -> torch.Tensor:
    """Group-normalised outcome advantages (GRPO): ``(r_i - mean_g) / (std + eps)`` over the group ``g`` of ``i``.

    Args:
        rewards: ``[B]`` float32 | float64 (bfloat16/float16 widened to float32): one scalar reward per sample
            (sum a token-level reward over its tokens first, as verl does).
        group_ids: ``[B]`` int64 | int32, any values: samples with equal ids form a group (e.g. the prompt index);
            groups may have unequal sizes and need not be contiguous.
        eps: added to the std before dividing.
        std: ``"unbiased"`` (divide by n - 1, ``torch.std``'s default), ``"biased"`` (by n), or ``None``: no
            division at all (same as ``scale="none"``).
        scale: whose std divides: ``"group"`` (the sample's group), ``"batch"`` (all B rewards, about their
            batch mean; the mean subtracted is still the group's), ``"none"`` (advantage = r - group mean).
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one (``$SMTPO_BACKEND``).

    A group of one has mean 0 and std 1 (verl's convention): its advantage is ``r / (1 + eps)`` (``r`` with
    ``scale="none"``; ``r / (batch_std + eps)`` with ``scale="batch"``). A batch of one has batch std 1.
    A zero-variance group gets advantage 0. A NaN reward makes its group's advantages NaN (all B with "batch").

    Which flags reproduce which library:
        * verl ``compute_grpo_outcome_advantage`` (``norm_adv_by_std_in_grpo=True``): the defaults,
          ``eps=1e-6, std="unbiased", scale="group"``; with ``norm_adv_by_std_in_grpo=False``: ``std=None``.
        * TRL ``GRPOTrainer`` (groups = consecutive blocks of ``num_generations``): ``eps=1e-4, std="unbiased"``
          and ``scale=args.scale_rewards`` (``"group"``, ``"batch"`` or ``"none"``; old boolean ``True`` ->
          ``"group"``, ``False`` -> ``"none"``, the Dr. GRPO setting). TRL has no groups of one in training.

    Returns:
        ``[B]`` advantages, float32 (float64 for float64 rewards).
    """
    rewards, group_ids = _check_groups(rewards, group_ids)
    if std is not None and std not in _STDS:
        raise ValueError(f"std: expected 'unbiased', 'biased' or None, got {std!r}")
    if scale not in _SCALES:
        raise ValueError(f"scale: expected one of {tuple(_SCALES)}, got {scale!r}")
    eps = _check_unit_float("eps", eps, hi=float("inf"))
    scale_code = 2 if std is None else _SCALES[scale]
    ddof = _STDS[std] if std is not None else 1
    name = _ext.select("grpo_advantages", rewards.device, backend)
    return torch.ops.smtpo_fast.group_advantages(0, rewards, group_ids, scale_code, ddof, eps, name)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: ``r_i - mean of the other rewards of i's group``.

    Equals ``n / (n - 1) * (r_i - mean_g)`` for a group of ``n > 1``; a group of one keeps its reward (no
    baseline), as verl's ``compute_rloo_outcome_advantage``. A NaN reward makes its group NaN.

    Args:
        rewards: ``[B]`` float32 | float64 (bfloat16/float16 widened to float32).
        group_ids: ``[B]`` int64 | int32, any values; equal ids form a group, sizes may differ.
        backend: as for ``grpo_advantages``.

    Returns:
        ``[B]`` float32 (float64 for float64 rewards).
    """
    rewards, group_ids = _check_groups(rewards, group_ids)
    name = _ext.select("rloo_advantages", rewards.device, backend)
    return torch.ops.smtpo_fast.group_advantages(1, rewards, group_ids, 0, 1, 0.0, name)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over token sequences, skipping masked tokens.

    For each row, over the valid tokens ``t`` (``mask != 0``) from last to first, with ``t'`` the next valid token
    after ``t`` in the row (none: ``V(t') = 0`` and ``A(t') = 0``)::

        delta_t = r_t + gamma * V(t') - V_t
        A_t     = delta_t + gamma * lam * A(t')
        R_t     = A_t + V_t

    Masked tokens (padding, or the simulator's turns inside one multi-turn sequence) are skipped: the next value
    and the running advantage carry over them unchanged and their rewards are ignored -- as verl's
    ``compute_gae_advantage_return`` with a response mask (``nextvalues``/``lastgaelam`` carried). Masked positions
    get advantage 0 and return 0 (verl leaves the carried values there; a loss masks them either way). verl's
    function also whitens its advantages: ``masked_whiten(adv, mask)`` here. An all-masked row is all 0. A NaN
    reward or value at a valid token makes that token and every earlier valid token of its row NaN.

    Args:
        rewards: ``[B, T]`` float32 | float64 (bfloat16/float16 widened to float32); usually 0 except at the last
            token of a response or turn.
        values: ``[B, T]``, same choices; the critic's value of each token.
        mask: ``[B, T]`` bool or floating; nonzero = a token produced by the policy.
        gamma: discount in [0, 1]; lam: GAE lambda in [0, 1].
        backend: ``"torch" | "cpu" | "cuda" | "triton"``; default: the fastest usable one (``$SMTPO_BACKEND``).

    Returns:
        ``(advantages, returns)``, each ``[B, T]`` float32 (float64 if rewards or values are float64).
    """
    _check_2d_pair(rewards=rewards, values=values)
    _check_mask("mask", mask, rewards.shape)
    check_same_device(rewards=rewards, values=values, mask=mask)
    gamma = _check_unit_float("gamma", gamma)
    lam = _check_unit_float("lam", lam)
    dt = _work_dtype(rewards, values)
    name = _ext.select("gae", rewards.device, backend)
    return torch.ops.smtpo_fast.rl_scan(0, _as_float(rewards, dt), _as_float(values, dt), _mask_bool(mask), gamma,
                                        lam, name)


def discounted_returns(
    rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float, backend: str | None = None
) -> torch.Tensor:
    """Discounted returns per sequence (REINFORCE++ style): ``R_t = r_t + gamma * R(t')`` over valid tokens.

    ``t'`` is the next valid token after ``t`` in the same row; each row is its own sequence (the return starts at
    0 after its last valid token). Masked tokens are skipped: the return carries over them, their rewards are
    ignored, and they get 0. verl's ``compute_reinforce_plus_plus_outcome_advantage`` instead resets the return at
    every masked token; for the usual mask (one contiguous run of valid tokens per row, then padding) the two agree
    on every valid token. verl then whitens: ``masked_whiten(R, mask)``. A NaN reward at a valid token makes that
    token and every earlier valid token of its row NaN.

    Args:
        rewards: ``[B, T]`` float32 | float64 (bfloat16/float16 widened to float32).
        mask: ``[B, T]`` bool or floating; nonzero = a token produced by the policy.
        gamma: discount in [0, 1].
        backend: as for ``gae``.

    Returns:
        ``[B, T]`` float32 (float64 for float64 rewards).
    """
    check_tensor("rewards", rewards, dtypes=FLOAT_DTYPES, ndim=(2,))
    _check_mask("mask", mask, rewards.shape)
    check_same_device(rewards=rewards, mask=mask)
    gamma = _check_unit_float("gamma", gamma)
    r = _as_float(rewards, _work_dtype(rewards))
    name = _ext.select("discounted_returns", rewards.device, backend)
    _, ret = torch.ops.smtpo_fast.rl_scan(1, r, r, _mask_bool(mask), gamma, 0.0, name)
    return ret


def turn_rewards_to_tokens(
    turn_rewards: torch.Tensor,
    turn_end: torch.Tensor,
    T: int,
    *,
    gamma_turn: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Token-level rewards from per-turn rewards of multi-turn episodes.

    Each valid turn ``k`` of row ``b`` (``turn_end[b, k] >= 0``) puts at token ``turn_end[b, k]`` (the last token
    of that policy turn) its turn-level return ``G_k = r_k + gamma_turn * G_{k'}``, ``k'`` being the next valid
    turn of the row (none: 0). So ``gamma_turn = 0`` places each turn's own reward only, ``gamma_turn < 1`` gives
    earlier turns the discounted sum of later turns' rewards (discounted per turn, not per token), and the default
    1 gives each turn the plain sum of its own and all later rewards. Every other token gets 0. A NaN reward makes
    that turn's and the row's earlier turns' entries NaN.

    Args:
        turn_rewards: ``[B, K]`` float32 | float64 (bfloat16/float16 widened to float32).
        turn_end: ``[B, K]`` int64 | int32: token index in ``[0, T)`` of each turn's last token, or -1 for a padding
            turn (anywhere in the row); the valid entries of a row must be strictly increasing.
        T: number of tokens per row of the output (>= 0).
        gamma_turn: per-turn discount in [0, 1].
        backend: as for ``gae``.

    Returns:
        ``[B, T]`` float32 (float64 for float64 turn rewards).
    """
    check_tensor("turn_rewards", turn_rewards, dtypes=FLOAT_DTYPES, ndim=(2,))
    check_tensor("turn_end", turn_end, dtypes=(torch.int64, torch.int32), ndim=(2,))
    if turn_end.shape != turn_rewards.shape:
        raise ValueError(
            f"turn_end: shape {tuple(turn_end.shape)} must equal turn_rewards' {tuple(turn_rewards.shape)}"
        )
    check_same_device(turn_rewards=turn_rewards, turn_end=turn_end)
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"T: expected an int >= 0, got {T!r}")
    gamma_turn = _check_unit_float("gamma_turn", gamma_turn)
    turn_end = turn_end.long().contiguous()
    if turn_end.numel():
        if bool(((turn_end < -1) | (turn_end >= T)).any()):
            raise ValueError(f"turn_end: values must be -1 (padding turn) or in [0, {T}); found "
                             f"{turn_end[(turn_end < -1) | (turn_end >= T)][0].item()}")
        # Largest valid end strictly before each turn (-1 when none): a valid end must exceed it.
        before = torch.cummax(turn_end, dim=1).values
        prev = torch.cat([turn_end.new_full((turn_end.shape[0], 1), -1), before[:, :-1]], dim=1)
        if bool(((turn_end >= 0) & (turn_end <= prev)).any()):
            raise ValueError("turn_end: the valid (>= 0) turn ends of each row must be strictly increasing")
    r = _as_float(turn_rewards, _work_dtype(turn_rewards))
    name = _ext.select("turn_rewards_to_tokens", r.device, backend)
    return torch.ops.smtpo_fast.turn_rewards_to_tokens(r, turn_end, T, gamma_turn, name)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is nonzero, along ``dim`` (all dims when None).

    Masked entries do not contribute even when they hold NaN or inf. Where no entry is valid the mean is 0 (what
    verl's ``sum / (count + 1e-8)`` gives; without its 1e-8 bias elsewhere). Plain torch on every device: it is
    one fused ``where`` + two sums, which no kernel of ours would beat.

    Args:
        x: any shape, float32 | float64 | bfloat16 | float16 (float64 accumulation).
        mask: same shape as ``x``, bool or floating; nonzero = valid.
        dim: int, tuple of ints or None.

    Returns:
        ``x``'s shape without ``dim`` (a 0-dim tensor for None), float32 (float64 for float64 ``x``).
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    _check_mask("mask", mask, x.shape)
    check_same_device(x=x, mask=mask)
    m = _mask_bool(mask)
    xw = x.double()  # float64 sums: the result is the float32 rounding of the exact mean, as for the kernels
    total = torch.where(m, xw, torch.zeros_like(xw)).sum(dim=dim)
    count = m.sum(dim=dim)
    return (total / count.clamp_min(1).to(total.dtype)).to(_work_dtype(x))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` with the mean and unbiased variance of its valid entries (all of them together), as verl's
    ``masked_whiten``: ``(x - mean) * rsqrt(var + eps)``, plus ``mean`` again when ``shift_mean`` is False.

    Masked entries get 0 (verl transforms them too; a loss masks them either way). With fewer than two valid
    entries the variance is taken as 0 (verl raises). Plain torch on every device.

    Args:
        x: any shape, floating.
        mask: same shape, bool or floating; nonzero = valid.

    Returns:
        ``x``'s shape, float32 (float64 for float64 ``x``).
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    _check_mask("mask", mask, x.shape)
    check_same_device(x=x, mask=mask)
    eps = _check_unit_float("eps", eps, hi=float("inf"))
    m = _mask_bool(mask)
    xw = x.double()
    zero = torch.zeros_like(xw)
    n = m.sum()
    mean = torch.where(m, xw, zero).sum() / n.clamp_min(1)
    centred = torch.where(m, xw - mean, zero)
    var = (centred * centred).sum() / (n - 1).clamp_min(1)
    out = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, zero).to(_work_dtype(x))
