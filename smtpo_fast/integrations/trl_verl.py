"""TRL's ``selective_log_softmax`` and verl's ``logprobs_from_logits``, on the fused op.

Use: ``trl.trainer.utils.selective_log_softmax = smtpo_fast.integrations.selective_log_softmax`` (or import it in
your own trainer); likewise ``verl.utils.torch_functional.logprobs_from_logits``.
"""

from __future__ import annotations

import torch

from ..ops.logprob import token_logprobs


def _as_rows(logits: torch.Tensor, index: torch.Tensor):
    """Give the op its [N, V] / [B, T, V] layout; other ranks are flattened (a view when the strides allow)."""
    if logits.dim() < 1 or index.shape != logits.shape[:-1]:
        raise ValueError(
            f"index: shape {tuple(index.shape)} must equal logits' leading shape {tuple(logits.shape[:-1])}"
        )
    if logits.dim() in (2, 3):
        return logits, index
    V = logits.shape[-1]
    return logits.reshape(-1, V), index.reshape(-1)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's ``selective_log_softmax``: ``log_softmax(logits, -1)`` gathered at ``index``.

    Args:
        logits: ``[..., V]`` float tensor (any float dtype).
        index: ``[...]`` integer tensor of token ids in ``[0, V)``.
    Returns:
        ``[...]`` log-probabilities in ``logits.dtype``, as TRL returns them.
    """
    rows, idx = _as_rows(logits, index)
    out = token_logprobs(rows, idx, ignore_index=-(2**62))  # TRL has no ignore index: every id is gathered
    return out.reshape(index.shape).to(logits.dtype)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True) -> torch.Tensor:
    """verl's ``logprobs_from_logits``: per-token log-probs of ``labels``, float32 like verl's flash-attn path.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16.
        labels: ``[...]`` int64 token ids in ``[0, V)``.
        inplace_backward: write the logits' gradient over the logits in backward, as verl's default does.
    Returns:
        ``[...]`` float32.
    """
    rows, idx = _as_rows(logits, labels)
    out = token_logprobs(rows, idx, ignore_index=-(2**62), inplace_backward=inplace_backward)
    return out.reshape(labels.shape)
