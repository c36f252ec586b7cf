"""Rollout engine: batched static-KV-cache generation for HF causal LMs, multi-turn conversations, fused sampling.

``RolloutEngine(model, tokenizer, max_batch=..., max_seq_len=...)``; ``conv = engine.start(prompts)``,
``engine.generate(conv, max_new_tokens=...)``, ``engine.extend(conv, turns)``, ``engine.fork(conv, G)``.
"""

from .cache import ATTN_IMPLEMENTATION, StaticKVCache, StepPlan, register_attention, rollout_attention
from .engine import Conversation, RolloutEngine, RolloutOutput, SamplingConfig

__all__ = [
    "ATTN_IMPLEMENTATION",
    "Conversation",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingConfig",
    "StaticKVCache",
    "StepPlan",
    "register_attention",
    "rollout_attention",
]
