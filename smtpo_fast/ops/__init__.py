"""The public ops. Each is a plain function on torch tensors; see DESIGN.md §2 for the contract."""

from .._ext import backends
from .advantages import (
    discounted_returns,
    gae,
    grpo_advantages,
    masked_mean,
    masked_whiten,
    rloo_advantages,
    turn_rewards_to_tokens,
)
from .attention import decode_attention, decode_attention_reference, kv_cache_append, kv_cache_append_reference
from ._grad_cache import empty_grad_cache, grad_cache_info
from .linear_logprob import linear_token_logprobs, linear_token_logprobs_reference
from .logprob import token_logprobs, token_logprobs_reference
from .policy_loss import kl_penalty, ppo_policy_loss
from .sampling import sample, sample_reference, sampling_logprobs_reference, sampling_mask_reference

__all__ = [
    "backends",
    "token_logprobs",
    "token_logprobs_reference",
    "empty_grad_cache",
    "grad_cache_info",
    "linear_token_logprobs",
    "linear_token_logprobs_reference",
    "grpo_advantages",
    "rloo_advantages",
    "gae",
    "discounted_returns",
    "turn_rewards_to_tokens",
    "masked_mean",
    "masked_whiten",
    "ppo_policy_loss",
    "kl_penalty",
    "decode_attention",
    "decode_attention_reference",
    "kv_cache_append",
    "kv_cache_append_reference",
    "sample",
    "sample_reference",
    "sampling_logprobs_reference",
    "sampling_mask_reference",
]
