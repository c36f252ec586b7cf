"""Drop-in replacements for the log-prob helpers of other RLHF codebases.

``selective_log_softmax`` has TRL's signature and semantics, ``logprobs_from_logits`` verl's; both run the fused
``smtpo_fast.ops.token_logprobs`` underneath, so they never build a float32 ``[..., V]`` copy of the logits.
"""

from .trl_verl import logprobs_from_logits, selective_log_softmax

__all__ = ["logprobs_from_logits", "selective_log_softmax"]
