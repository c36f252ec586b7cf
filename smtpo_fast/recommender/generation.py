"""Sampling answers and scoring their tokens: the one place the rollout engine plugs in.

`generate_answers` samples through the rollout engine (`smtpo_fast.rollout.RolloutEngine`) for the architectures
it supports, HF `generate` otherwise (or with `backend="hf"`). With the engine, each prompt is prefilled once and
its G answers are `fork`s of that prefix (a cache copy, no model compute), so a group costs one prefill instead
of G. `extend` (appending the next turn to a cached conversation) does not apply to the recommender: every turn's
prompt is rebuilt -- the history window slides and the retriever's candidates are new -- so turn k + 1 is not
turn k's prompt plus appended text, and each turn starts a fresh conversation.

`sequence_logprobs` runs the policy over prompt + response and returns the response tokens' log-probs and
entropies straight from the LM head (`linear_token_logprobs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..integrations import causal_lm_token_logprobs
from ..train.data import IGNORE_INDEX


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    """Generated tokens up to and including the end-of-turn token (when the model produced one)."""
    text: str
    """The response decoded without special tokens."""
    logprobs: list[float] | None = None
    """Per response token, its log-prob under the sampling policy at temperature 1 without truncation (the rollout
    engine gives them; None from HF generate): the behaviour log-probs PPO needs, without another forward."""


def chat_prompt_ids(tokenizer, messages: list[dict], max_prompt_tokens: int) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_tokens:] if max_prompt_tokens > 0 else ids


def engine_supports(model) -> bool:
    """Whether the rollout engine can run `model` (a plain HF causal LM of a supported architecture)."""
    from ..rollout.engine import SUPPORTED_MODEL_TYPES

    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES and hasattr(model, "model")
            and not hasattr(model, "peft_config"))


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], num_samples: int = 1, max_new_tokens: int = 96,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                     max_prompt_tokens: int = 896, backend: str = "auto") -> list[list[Sample]]:
    """`num_samples` answers per chat prompt (greedy when temperature is 0, then all samples are equal).
    `backend`: 'engine' (the rollout engine), 'hf' (HF `generate`) or 'auto' (the engine when it supports the
    model). `batch_size` bounds the sequences (prompts x num_samples) decoded together."""
    if backend not in ("auto", "engine", "hf"):
        raise ValueError(f"backend: expected 'auto', 'engine' or 'hf', got {backend!r}")
    if backend == "engine" or (backend == "auto" and engine_supports(model)):
        return _generate_engine(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p,
                                batch_size, max_prompt_tokens)
    return _generate_hf(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, batch_size,
                        max_prompt_tokens)


def _samples(tokenizer, prompt_ids: list[int], responses: list[list[int]],
             logprobs: list[list[float]] | None = None) -> list[Sample]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    group = []
    for n, response in enumerate(responses):
        if eos in response:
            response = response[:response.index(eos) + 1]
        lp = None if logprobs is None else logprobs[n][:len(response)]
        group.append(Sample(list(prompt_ids), response, tokenizer.decode(response, skip_special_tokens=True).strip(),
                            lp))
    return group


def _generate_engine(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, batch_size,
                     max_prompt_tokens) -> list[list[Sample]]:
    from ..rollout import RolloutEngine

    was_training = model.training
    encoded = [chat_prompt_ids(tokenizer, p, max_prompt_tokens) for p in prompts]
    G = max(1, num_samples)
    per_call = max(1, batch_size // G)
    longest = max(len(ids) for ids in encoded)
    # Rows: the prefilled prompts plus their G forks are alive together during one call.
    engine = RolloutEngine(model, tokenizer, max_batch=per_call * (G + 1 if G > 1 else 1),
                           max_seq_len=longest + max_new_tokens + 1)
    sample = temperature > 0
    out: list[list[Sample]] = []
    try:
        for start in range(0, len(encoded), per_call):
            chunk = encoded[start:start + per_call]
            conv = engine.start(chunk)
            rows = conv
            if G > 1:  # G samples share one prefill: fork copies the prompt's cache rows
                rows = engine.fork(conv, G)
                engine.release(conv)
            result = engine.generate(rows, max_new_tokens=max_new_tokens, do_sample=sample,
                                     temperature=temperature if sample else 1.0,
                                     top_p=top_p if sample and top_p < 1.0 else None,
                                     eos_token_id=tokenizer.eos_token_id)
            engine.release(rows)
            tokens = result.token_lists()
            logprobs = result.ref_logprobs.float().cpu().tolist()
            for b, ids in enumerate(chunk):
                out.append(_samples(tokenizer, ids, tokens[b * G:(b + 1) * G], logprobs[b * G:(b + 1) * G]))
    finally:
        model.train(was_training)
    return out


def _generate_hf(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, batch_size,
                 max_prompt_tokens) -> list[list[Sample]]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    encoded = [chat_prompt_ids(tokenizer, p, max_prompt_tokens) for p in prompts]
    out: list[list[Sample]] = []
    per_call = max(1, batch_size // max(1, num_samples))
    for start in range(0, len(encoded), per_call):
        chunk = encoded[start:start + per_call]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):  # left padding: generation continues every row at the same position
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        sample = temperature > 0
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=num_samples,
                      eos_token_id=eos, pad_token_id=pad)
        kwargs.update(dict(temperature=temperature, top_p=top_p, top_k=0) if sample
                      else dict(temperature=None, top_p=None, top_k=None))
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        new = generated[:, width:].tolist()
        for row, ids in enumerate(chunk):
            group = new[row * num_samples:(row + 1) * num_samples]
            if pad != eos:  # rows that stopped early are padded after their EOS
                group = [r[:r.index(eos) + 1] if eos in r else [t for t in r if t != pad] for r in group]
            out.append(_samples(tokenizer, ids, group))
    model.train(was_training)
    return out


def pack_samples(samples: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` [B, L] int64, `attention_mask` [B, L] int64 and `labels` [B, L] int64
    (IGNORE_INDEX on prompt and padding) of prompt + response rows."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(samples):
        n_p, n_r = len(s.prompt_ids), len(s.response_ids)
        ids[row, :n_p + n_r] = torch.tensor(s.prompt_ids + s.response_ids)
        mask[row, :n_p + n_r] = 1
        labels[row, n_p:n_p + n_r] = torch.tensor(s.response_ids, dtype=torch.long)
    return ids, mask, labels


def packed_behaviour_logprobs(samples: list[Sample], width: int) -> torch.Tensor | None:
    """[B, width - 1] float32 in `sequence_logprobs`' layout (position t scores token t + 1) from the samples'
    own log-probs, or None when any sample lacks them."""
    if any(s.logprobs is None or len(s.logprobs) != len(s.response_ids) for s in samples):
        return None
    out = torch.zeros((len(samples), width - 1), dtype=torch.float32)
    for row, s in enumerate(samples):
        n_p = len(s.prompt_ids)
        out[row, n_p - 1:n_p - 1 + len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    return out


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                      with_entropy: bool = False):
    """Log-probs of the response tokens under `model`: `logp` [B, L-1] float32 (0 off the response), the
    response mask [B, L-1] bool and, with `with_entropy`, the entropy [B, L-1] float32 of each next-token
    distribution. Position t scores token t + 1."""
    # Straight from the LM head (linear_token_logprobs), on the response positions only: no [B, L, V] logits.
    mask = labels[:, 1:] != IGNORE_INDEX
    out = causal_lm_token_logprobs(model, input_ids, attention_mask, labels=labels, ignore_index=IGNORE_INDEX,
                                   return_entropy=with_entropy)
    if with_entropy:
        logp, entropy = out
        return logp, mask, entropy
    return out, mask, None
