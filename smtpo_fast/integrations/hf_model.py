"""Per-token log-probs of an HF causal LM without ``[B, T, V]`` logits: body to hidden states, then the fused head.

``causal_lm_token_logprobs(model, input_ids, attention_mask)`` is what TRL's ``_get_per_token_logps`` and verl's
``_forward_micro_batch`` compute (``model(...).logits`` → shift → ``/ temperature`` → log-softmax → gather, and
optionally entropy), but it runs only the decoder body (``model.get_decoder()``) and hands the final hidden states
and ``lm_head.weight`` to ``smtpo_fast.ops.linear_token_logprobs``, which holds one tile of logits at a time in
forward and backward. ``causal_lm_nll`` is the SFT loss on the same path. peft-wrapped models work (LoRA layers live
inside the body); a head that is not a plain ``nn.Linear`` (e.g. LoRA on ``lm_head``) falls back to real logits.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from ..ops.linear_logprob import linear_token_logprobs
from ..ops.logprob import token_logprobs


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under peft / DDP / FSDP-style wrappers (those exposing the usual accessors)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # peft
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module) and not hasattr(model, "get_decoder"):
            model = model.module  # DistributedDataParallel and friends
    return model


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(body, head)`` of an HF causal LM: the decoder that returns final hidden states, and the LM head."""
    base = _unwrap(model)
    body = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else getattr(base, "lm_head", None)
    if body is None or head is None:
        raise TypeError(
            f"model: expected an HF causal LM with get_decoder() and get_output_embeddings(), got {type(base).__name__}"
        )
    cfg = getattr(base, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"model: config.{attr} transforms the logits; the fused head does not apply it")
    return body, head


def _targets(input_ids, attention_mask, labels, logits_to_keep, ignore_index):
    """Shifted targets ``[B, K]`` (``ignore_index`` where masked) and the slice of positions that predict them."""
    T = input_ids.shape[1]
    keep = T - 1 if logits_to_keep is None else int(logits_to_keep)
    if not 0 <= keep <= T - 1:
        raise ValueError(f"logits_to_keep: expected an int in [0, {T - 1}] (T - 1 for T = {T}), got {logits_to_keep}")
    src = input_ids if labels is None else labels
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(f"labels: shape {tuple(labels.shape)} must equal input_ids' {tuple(input_ids.shape)}")
    targets = src[:, T - keep:]
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: shape {tuple(attention_mask.shape)} must equal input_ids' {tuple(input_ids.shape)}"
            )
        targets = targets.masked_fill(attention_mask[:, T - keep:] == 0, ignore_index)
    return targets, slice(T - keep - 1, T - 1)


def causal_lm_token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    labels: Optional[torch.Tensor] = None,
    logits_to_keep: Optional[int] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    skip_masked: bool = True,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
    **model_kwargs,
):
    """Log-prob of each next token under ``model`` (and the entropy there), never building ``[B, T, V]`` logits.

    Position ``t`` of the result is ``log softmax(logits[:, t'] / temperature)[target]`` for the logits at
    ``t' = t + T - K - 1`` and the token at ``t' + 1`` (the usual shift), where ``K = logits_to_keep`` or ``T - 1``.

    Args:
        model: an HF causal LM (Llama, Qwen2, ... family), optionally peft-wrapped.
        input_ids: ``[B, T]`` int64 token ids, ``T >= 1``.
        attention_mask: ``[B, T]`` 0/1 (any int or bool dtype) or None; padded targets get ``ignore_index``
            treatment (log-prob 0, no gradient).
        labels: ``[B, T]`` int64 or None: targets instead of ``input_ids`` (HF style, ``ignore_index`` on prompt
            tokens); shifted like ``input_ids``.
        logits_to_keep: score only the last ``K`` targets (TRL's completion tokens); None scores all ``T - 1``.
        temperature: positive; divides the logits (TRL / verl sampling temperature).
        ignore_index: label value that marks tokens not to score.
        return_entropy: also return the entropy of each scored position's distribution.
        skip_masked: run the LM head only on scored positions (the others get log-prob 0 and entropy 0); saves the
            head's matmuls on prompt and padding tokens.
        chunk_size, backend: passed to ``linear_token_logprobs``.
        **model_kwargs: passed to the decoder body (``position_ids``, ...).

    Returns:
        ``logp`` ``[B, K]`` float32, or ``(logp, entropy)`` both ``[B, K]`` float32.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a [B, T] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids: expected at least one token per row (T >= 1)")
    body, head = causal_lm_parts(model)
    targets, positions = _targets(input_ids, attention_mask, labels, logits_to_keep, ignore_index)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    hidden = hidden[:, positions]
    B, K = targets.shape

    if not _plain_linear(head):
        warnings.warn(
            f"smtpo_fast: LM head {type(head).__name__} is not a plain nn.Linear; computing real logits",
            RuntimeWarning,
            stacklevel=2,
        )
        logits = head(hidden)
        res = token_logprobs(logits, targets, temperature=temperature, ignore_index=ignore_index,
                             return_entropy=return_entropy, backend=backend)
        return res

    weight, bias = head.weight, head.bias
    if weight.dtype != hidden.dtype:  # autocast or a float32 head over a low-precision body
        weight = weight.to(hidden.dtype)
        bias = None if bias is None else bias.to(hidden.dtype)
    kw = dict(bias=bias, temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy,
              chunk_size=chunk_size, backend=backend)
    if not skip_masked:
        return linear_token_logprobs(hidden, weight, targets, **kw)

    flat_targets = targets.reshape(-1)
    rows = (flat_targets != ignore_index).nonzero().squeeze(1)
    res = linear_token_logprobs(hidden.reshape(B * K, -1).index_select(0, rows), weight, flat_targets[rows], **kw)
    res = res if return_entropy else (res,)
    full = tuple(r.new_zeros(B * K).index_copy(0, rows, r).reshape(B, K) for r in res)
    return full if return_entropy else full[0]


def _plain_linear(head: nn.Module) -> bool:
    """nn.Linear, or a subclass whose forward is nn.Linear's (so ``weight``/``bias`` say all the head does)."""
    return isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward


def causal_lm_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    labels: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
    **model_kwargs,
) -> torch.Tensor:
    """Mean next-token negative log-likelihood over scored tokens: HF's ``model(..., labels=labels).loss``.

    Args as ``causal_lm_token_logprobs``; returns a float32 scalar (0 when no token is scored).
    """
    logp = causal_lm_token_logprobs(
        model, input_ids, attention_mask, labels=labels, ignore_index=ignore_index,
        chunk_size=chunk_size, backend=backend, **model_kwargs,
    )
    targets, _ = _targets(input_ids, attention_mask, labels, None, ignore_index)
    count = (targets != ignore_index).sum().clamp(min=1)
    return -logp.sum() / count
