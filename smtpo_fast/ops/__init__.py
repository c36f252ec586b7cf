"""The public ops. Each is a plain function on torch tensors; see DESIGN.md §2 for the contract."""

from .._ext import backends
from .logprob import token_logprobs, token_logprobs_reference

__all__ = ["backends", "token_logprobs", "token_logprobs_reference"]

from .linear_logprob import linear_token_logprobs, linear_token_logprobs_reference  # noqa: E402

__all__ += ["linear_token_logprobs", "linear_token_logprobs_reference"]
