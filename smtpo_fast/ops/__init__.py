"""The public ops. Each is a plain function on torch tensors; see DESIGN.md §2 for the contract."""

from .._ext import backends
from .attention import decode_attention, decode_attention_reference, kv_cache_append, kv_cache_append_reference
from .logprob import token_logprobs, token_logprobs_reference
from .sampling import sample, sample_reference, sampling_logprobs_reference, sampling_mask_reference

__all__ = [
    "backends",
    "decode_attention",
    "decode_attention_reference",
    "kv_cache_append",
    "kv_cache_append_reference",
    "sample",
    "sample_reference",
    "sampling_logprobs_reference",
    "sampling_mask_reference",
    "token_logprobs",
    "token_logprobs_reference",
]
