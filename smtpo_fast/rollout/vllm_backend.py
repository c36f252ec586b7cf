"""``RolloutEngine(..., backend="vllm")``: the same start / generate / extend / fork interface on top of vLLM.

vLLM keeps its own paged KV cache; multi-turn reuse comes from its automatic prefix caching (a conversation is
resubmitted as its full token history each turn and the cached prefix blocks are found by hash), and ``fork`` is
free (the G copies share the prefix blocks). Optional: vLLM is not a dependency and this path is not in CI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import RolloutOutput


@dataclass
class VllmConversation:
    token_ids: list[list[int]]
    released: bool = False

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def size(self) -> int:
        return len(self.token_ids)


class VllmRolloutEngine:
    """See ``RolloutEngine``. ``model``: an HF model (its ``name_or_path`` is loaded by vLLM) or a path."""

    def __init__(self, model, tokenizer=None, *, max_batch: int, max_seq_len: int, dtype=None, **vllm_kwargs):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError("backend='vllm' needs vLLM installed (pip install vllm)") from exc
        path = model if isinstance(model, str) else getattr(getattr(model, "config", None), "name_or_path", None)
        if not path:
            raise ValueError("model: backend='vllm' needs a checkpoint path (model.config.name_or_path is empty)")
        dtype_name = "auto" if dtype is None else str(dtype).replace("torch.", "")
        self._vllm = vllm
        self.llm = vllm.LLM(model=path, tokenizer=getattr(tokenizer, "name_or_path", None) or path, dtype=dtype_name,
                            max_num_seqs=max_batch, max_model_len=max_seq_len, enable_prefix_caching=True,
                            **vllm_kwargs)
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _ids(self, seqs, n=None):
        if isinstance(seqs, torch.Tensor):
            seqs = seqs.tolist()
        out = [self.tokenizer(s, add_special_tokens=False)["input_ids"] if isinstance(s, str) else list(s)
               for s in seqs]
        if n is not None and len(out) != n:
            raise ValueError(f"new_turn_token_ids: expected {n} rows, got {len(out)}")
        return out

    def start(self, prompts) -> VllmConversation:
        seqs = self._ids(prompts)
        if len(seqs) > self.max_batch:
            raise ValueError(f"prompts: batch of {len(seqs)} is over max_batch={self.max_batch}")
        for i, s in enumerate(seqs):
            if len(s) >= self.max_seq_len:
                raise ValueError(f"prompts: prompt {i} has {len(s)} tokens, max_seq_len={self.max_seq_len}")
        return VllmConversation(seqs)

    def extend(self, conv: VllmConversation, new_turn_token_ids) -> VllmConversation:
        for hist, s in zip(conv.token_ids, self._ids(new_turn_token_ids, conv.size)):
            hist.extend(s)
        return conv

    def fork(self, conv: VllmConversation, num_copies: int) -> VllmConversation:
        return VllmConversation([list(h) for h in conv.token_ids for _ in range(num_copies)])

    def release(self, conv: VllmConversation) -> None:
        conv.released = True

    def generate(self, conv: VllmConversation, *, max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k=None, top_p=None, min_p=None, seed=None, eos_token_id=None,
                 stop_strings=None) -> RolloutOutput:
        params = self._vllm.SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0, top_k=top_k or -1,
            top_p=top_p or 1.0, min_p=min_p or 0.0, seed=seed, stop=stop_strings, logprobs=0,
            ignore_eos=eos_token_id == [], stop_token_ids=None if not eos_token_id else list(eos_token_id),
        )
        prompts = [{"prompt_token_ids": h} for h in conv.token_ids]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        n, T = conv.size, max_new_tokens
        tokens = torch.full((n, T), self.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((n, T), dtype=torch.bool)
        logprobs = torch.zeros((n, T), dtype=torch.float32)
        for b, res in enumerate(results):
            comp = res.outputs[0]
            ids = list(comp.token_ids)[:T]
            tokens[b, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            mask[b, : len(ids)] = True
            for t, (tok, lp) in enumerate(zip(ids, comp.logprobs or [])):
                logprobs[b, t] = lp[tok].logprob
            conv.token_ids[b].extend(ids)
        # vLLM reports the processed distribution's log-probs; the untruncated T=1 ones are not available here.
        ref = torch.full_like(logprobs, float("nan")).masked_fill(~mask, 0.0)
        return RolloutOutput(tokens, mask, logprobs, ref, mask.sum(1))
