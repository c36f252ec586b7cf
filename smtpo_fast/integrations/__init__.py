"""Drop-in replacements for the log-prob helpers of other RLHF codebases."""

from .hf_model import causal_lm_nll, causal_lm_token_logprobs  # noqa: F401
