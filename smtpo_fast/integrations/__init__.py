"""Drop-in replacements for the log-prob helpers of other RLHF codebases.

``selective_log_softmax`` has TRL's signature and semantics, ``logprobs_from_logits`` verl's; both run the fused
``smtpo_fast.ops.token_logprobs`` underneath, so they never build a float32 ``[..., V]`` copy of the logits.
``causal_lm_token_logprobs`` / ``causal_lm_nll`` run an HF causal LM to its final hidden states and take the
log-probs straight from the LM head (``linear_token_logprobs``), so no ``[B, T, V]`` logits are ever built.
"""

from .hf_model import causal_lm_nll, causal_lm_token_logprobs
from .trl_verl import logprobs_from_logits, selective_log_softmax

__all__ = ["causal_lm_nll", "causal_lm_token_logprobs", "logprobs_from_logits", "selective_log_softmax"]
