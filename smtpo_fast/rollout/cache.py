"""The engine's static KV cache and the attention function it plugs into HF models.

HF's Llama / Qwen2 / Mistral attention modules project q/k/v, apply RoPE, call ``cache.update(k, v, layer_idx)``
and then the attention function named by ``config._attn_implementation``. The engine registers
``"smtpo_rollout"`` in ``transformers.AttentionInterface`` and passes a ``StaticKVCache`` plus a ``StepPlan``
(as the ``rollout_plan`` keyword, which HF forwards untouched to both), so the model code stays HF's:

* ``update`` writes the new keys/values in place into preallocated ``[rows, Hkv, S, D]`` buffers (one
  ``kv_cache_write`` per layer, ``kv_cache_append``'s write) and hands back the whole buffers;
* the attention function runs ``decode_attention`` (one query per row, ragged lengths, GQA) for decode steps, and
  per-row causal SDPA over ``[0, pos0 + n)`` of the row's cache for packed ragged prefills / ``extend``.

Because ``"smtpo_rollout"`` is not in HF's mask registry, ``create_causal_mask`` returns None at once: no per-step
mask is built. ``RolloutEngine`` switches the model to this implementation only for the duration of its calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.attention import _forward_native, decode_attention, kv_cache_flat_index, kv_cache_write

ATTN_IMPLEMENTATION = "smtpo_rollout"


@dataclass
class StepPlan:
    """What one forward pass of the engine does, read by ``StaticKVCache.update`` and ``rollout_attention``.

    Decode (``segments is None``): token ``b`` of the batch is written at ``positions[b]`` of cache row
    ``rows[b]`` and attends to ``[0, lengths[b])`` of that row (``lengths = positions + 1``).
    Prefill (``segments`` given): the batch is one packed sequence of ``N`` tokens; token ``i`` is written at
    ``positions[i]`` of row ``rows[i]``; each segment ``(row, start, n, pos0)`` is ``n`` consecutive tokens of one
    cache row that start at cache position ``pos0`` and attend causally to ``[0, pos0 + n)`` of it.
    """

    rows: torch.Tensor                 # [B] or [N] int64 cache rows
    positions: torch.Tensor            # [B] or [N] int64 write positions
    lengths: torch.Tensor | None = None  # [B] int64 (decode)
    segments: list | None = None         # prefill: [(row, start, n, pos0)] as Python ints
    attention_backend: str | None = None
    direct_cpu: bool = False             # decode on the CPU kernel: call it straight (see rollout_attention)
    _flat: torch.Tensor | None = None    # see flat_index

    def flat_index(self, num_heads: int, seq_len: int) -> torch.Tensor:
        """``kv_cache_flat_index`` of this forward's tokens, built once and shared by every layer's write."""
        if self._flat is None:
            self._flat = kv_cache_flat_index(self.rows, self.positions, num_heads, seq_len)
        return self._flat


# The plan of the forward in progress, set by RolloutEngine around each model call. HF versions differ in which
# keyword arguments reach ``cache.update`` (5.17 passes none), so both hooks fall back to this.
_active_plan: "StepPlan | None" = None


@contextmanager
def active_plan(plan: "StepPlan"):
    global _active_plan
    previous, _active_plan = _active_plan, plan
    try:
        yield
    finally:
        _active_plan = previous


class StaticKVCache:
    """Per layer ``k[l], v[l]``: ``[num_rows, Hkv, max_seq_len, D]`` buffers allocated once, written in place.

    Only the two methods HF's attention modules call are implemented (``update``, plus the properties its mask
    helpers may look at); it is deliberately not an ``transformers.Cache`` (no growth, no per-step bookkeeping).
    """

    is_compileable = True

    def __init__(self, num_layers, num_rows, num_kv_heads, max_seq_len, head_dim, dtype, device):
        shape = (num_rows, num_kv_heads, max_seq_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_seq_len = max_seq_len
        self.num_rows = num_rows

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None, kwargs=None, **extra):
        plan: StepPlan = (kwargs or cache_kwargs or extra or {}).get("rollout_plan") or _active_plan
        if plan is None:
            raise RuntimeError("StaticKVCache.update: called without a rollout_plan (use it through RolloutEngine)")
        K, V = self.k[layer_idx], self.v[layer_idx]
        if plan.segments is None:  # decode: [B, Hkv, 1, D]
            k_new, v_new = key_states[:, :, 0], value_states[:, :, 0]
        else:  # packed prefill: [1, Hkv, N, D]
            k_new, v_new = key_states[0].transpose(0, 1), value_states[0].transpose(0, 1)
        # Validated once per engine call, not per layer: kv_cache_append's write without its checks.
        kv_cache_write(K, V, k_new, v_new, plan.flat_index(K.shape[1], K.shape[2]))
        return K, V

    # HF's mask helpers ask these of caches; one full-attention layer group.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("StaticKVCache: pass position_ids explicitly (the engine always does)")

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def rollout_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"smtpo_rollout"`` attention function. ``query``: ``[B, Hq, T, D]``; ``key`` / ``value``: the cache
    buffers returned by ``StaticKVCache.update``. Returns ``([B, T, Hq, D], None)`` as HF's functions do."""
    plan: StepPlan | None = kwargs.get("rollout_plan") or _active_plan
    if plan is None:
        # Used outside the engine (e.g. a training forward while the engine's implementation is still set).
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    sliding = kwargs.get("sliding_window")
    if sliding is not None and sliding < key.shape[2]:
        raise NotImplementedError("rollout engine: sliding-window attention shorter than max_seq_len")
    if plan.segments is None:
        q = query[:, :, 0]
        if plan.direct_cpu and q.stride(-1) == 1:
            # The engine's own buffers, shapes fixed at construction: the native kernel without the op's dispatch
            # and argument checks (~40 us a layer, more than the kernel at short lengths).
            scale = scaling if scaling is not None else q.shape[-1] ** -0.5
            return _forward_native(q, key, value, plan.lengths, scale, plan.rows, "cpu").unsqueeze(1), None
        out = decode_attention(query[:, :, 0], key, value, plan.lengths, scale=scaling, cache_rows=plan.rows,
                               backend=plan.attention_backend)
        return out.unsqueeze(1), None
    B, Hq, N, D = query.shape
    out = query.new_empty((1, N, Hq, D))
    gqa = Hq != key.shape[1]
    for row, start, n, pos0 in plan.segments:
        q = query[:, :, start:start + n]
        k = key[row:row + 1, :, :pos0 + n]
        v = value[row:row + 1, :, :pos0 + n]
        if pos0 == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            # Query i sits at cache position pos0 + i and sees positions <= pos0 + i.
            allowed = (torch.arange(pos0 + n, device=q.device)[None, :]
                       <= (pos0 + torch.arange(n, device=q.device))[:, None])
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scaling, enable_gqa=gqa)
        out[0, start:start + n] = o[0].transpose(0, 1)
    return out, None


_registered = False


def register_attention() -> str:
    """Register ``rollout_attention`` in transformers' AttentionInterface (once) and return its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_IMPLEMENTATION, rollout_attention)
        _registered = True
    return ATTN_IMPLEMENTATION
