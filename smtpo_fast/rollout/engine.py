"""``RolloutEngine``: batched generation for HF causal LMs over a static KV cache, with multi-turn conversations.

The hot loop, in gpt-fast's shape:

* ``_prefill``  -- one packed forward over the new tokens of every row (ragged, no padding), writing their
  keys/values into the rows' cache slots and keeping the next-token logits;
* ``_decode_step`` -- one token per row: forward at per-row positions, pick (argmax or the fused ``sample`` op,
  seeded from a device tensor), per-row EOS bookkeeping -- all in place on device tensors, no host sync, so the
  same function is what the CUDA graphs capture (graphs.py);
* ``generate`` -- runs the decode steps and looks at the host only every ``poll_every`` steps (all rows done?
  stop strings?).

A ``Conversation`` is a set of cache rows. ``extend`` appends the other speaker's turn to each row and prefills
only those tokens (plus the one sampled token not yet in the cache), so a T-turn dialogue costs O(total tokens).
``fork`` copies rows' caches into G new rows each (the prefix is computed once; the copy is a memory copy).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from .. import _ext
from ..ops.sampling import sample_with_cutoff
from .cache import StaticKVCache, StepPlan, active_plan, register_attention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class RolloutOutput:
    """What ``generate`` returns for a conversation of ``n`` rows and ``max_new_tokens = T``.

    tokens: ``[n, T]`` int64, the generated ids (``pad_token_id`` after a row stopped).
    mask: ``[n, T]`` bool, True for generated tokens (the stop token included).
    logprobs: ``[n, T]`` float32, log-prob of each token under the sampling distribution (temperature, top-k/p,
        min-p); 0 for greedy decoding (a point mass).
    ref_logprobs: ``[n, T]`` float32, log-prob under temperature 1 without truncation (what a trainer recomputes).
    num_tokens: ``[n]`` int64, generated tokens per row.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    num_tokens: torch.Tensor

    def token_lists(self) -> list[list[int]]:
        return [row[: int(n)] for row, n in zip(self.tokens.tolist(), self.num_tokens.tolist())]


@dataclass
class Conversation:
    """Rows of the engine's cache holding one dialogue each. Created by ``RolloutEngine.start`` / ``fork``.

    token_ids: per row, every token of the dialogue so far (prompt, generated turns, extended turns).
    """

    engine: "RolloutEngine"
    rows: list[int]
    token_ids: list[list[int]]
    cached: list[int]                           # tokens in the cache per row
    rows_t: torch.Tensor = None                 # [n] int64 on the engine device
    pending: torch.Tensor | None = None         # [n] int64: sampled, not yet in the cache
    next_logits: torch.Tensor | None = None     # [n, V]: logits after the last cached token
    released: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        return len(self.rows)


@dataclass
class _DecodeState:
    """Device tensors one decode step reads and updates in place (static buffers under CUDA graphs)."""

    cur: torch.Tensor     # [B] int64: token to feed (sampled, not yet in the cache)
    pos: torch.Tensor     # [B] int64: tokens in the cache = where ``cur`` goes
    rows: torch.Tensor    # [B] int64: cache rows
    done: torch.Tensor    # [B] bool
    seed: torch.Tensor    # [1] int64, bumped every step
    tok: torch.Tensor     # [B] int64: this step's pick
    lp: torch.Tensor      # [B] float32
    lp1: torch.Tensor     # [B] float32
    active: torch.Tensor  # [B] bool: rows that were still generating this step


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None


class RolloutEngine:
    """Batched static-KV-cache generation for HF Llama / Qwen2 / Mistral causal LMs (SmolLM2, Qwen2.5, ...).

    Args:
        model: a ``*ForCausalLM`` of a supported architecture; its forward code is used as is.
        tokenizer: optional; gives EOS / pad ids and detokenises for stop strings.
        max_batch: most rows alive at once (all conversations together).
        max_seq_len: cache length per row (prompt + every turn).
        dtype: model and cache dtype; default the model's. A different one converts the model (``model.to``).
        backend: ``"hf"`` (this engine) or ``"vllm"`` (vllm_backend.VllmRolloutEngine, same interface).
        attention_backend / sample_backend: force an op backend (default: fastest usable).
        cuda_graphs: capture decode steps in CUDA graphs per batch-size bucket (default: on for CUDA models).
        cpu_linear: decode matmuls through the native skinny linear kernel, weights read in place (cpu_linear.py;
            default: on for float32 / bfloat16 CPU models when the native module is built).
        poll_every: decode steps between host checks (all rows stopped? stop strings?).
    """

    def __new__(cls, model=None, tokenizer=None, *args, backend: str = "hf", **kwargs):
        if backend == "vllm" and cls is RolloutEngine:
            from .vllm_backend import VllmRolloutEngine

            return VllmRolloutEngine(model, tokenizer, *args, **kwargs)
        if backend not in ("hf", "vllm"):
            raise ValueError(f"backend: expected 'hf' or 'vllm', got {backend!r}")
        return super().__new__(cls)

    def __init__(self, model, tokenizer=None, *, max_batch: int, max_seq_len: int, dtype=None, backend: str = "hf",
                 attention_backend: str | None = None, sample_backend: str | None = None,
                 cuda_graphs: bool | None = None, cpu_linear: bool | None = None, poll_every: int = 8):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model: unsupported architecture {model_type!r} ({type(model).__name__}); the rollout engine "
                f"supports HF causal LMs of types {SUPPORTED_MODEL_TYPES}"
            )
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
        if not isinstance(max_seq_len, int) or max_seq_len < 2:
            raise ValueError(f"max_seq_len: expected an int >= 2, got {max_seq_len!r}")
        self._check_sliding_window(config, max_seq_len)
        if dtype is not None and next(model.parameters()).dtype != dtype:
            model = model.to(dtype)
        self.model = model.eval()
        self.config = config
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.poll_every = max(1, int(poll_every))

        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        # One extra row: a scratch row for the padding rows of CUDA-graph batch buckets.
        self.scratch_row = max_batch
        self.cache = StaticKVCache(config.num_hidden_layers, max_batch + 1, n_kv, max_seq_len, head_dim,
                                   self.dtype, self.device)
        self._free_rows = list(range(max_batch))
        self.attention_backend = attention_backend
        self.sample_backend = sample_backend
        self._logprob_backend = _ext.select("token_logprobs", self.device)
        self._attn_name = register_attention()
        self._direct_cpu_attention = (
            self.device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and _ext.select("decode_attention", self.device, attention_backend, self.dtype, "q") == "cpu"
        )
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        self.eos_token_id = eos
        pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None and tokenizer is not None:
            pad = tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else 0)
        self.pad_token_id = int(pad)

        from .cpu_linear import SKINNY_DTYPES, SkinnyLinears, skinny_available

        usable = self.device.type == "cpu" and self.dtype in SKINNY_DTYPES and skinny_available()
        if cpu_linear is None:
            cpu_linear = usable
        if cpu_linear and not usable:
            raise ValueError("cpu_linear: needs a float32 / bfloat16 model on the CPU and the native module built")
        self._cpu_linears = SkinnyLinears(model) if cpu_linear else None

        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs: needs a model on a CUDA device")
        self._graphs = None
        if cuda_graphs:
            from .graphs import DecodeGraphs

            self._graphs = DecodeGraphs(self)

    # ------------------------------------------------------------------------------------------------------------
    # checks and small helpers
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_sliding_window(config, max_seq_len):
        sw = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or []
        uses_sliding = "sliding_attention" in layer_types or (
            config.model_type == "mistral" and sw is not None
        )
        if uses_sliding and sw is not None and sw < max_seq_len:
            raise ValueError(
                f"model: sliding-window attention (window {sw}) shorter than max_seq_len={max_seq_len} is not "
                "supported by the rollout engine; lower max_seq_len to at most the window"
            )

    @contextlib.contextmanager
    def _engine_attention(self):
        """Run the model with the engine's attention implementation, restoring the user's afterwards."""
        previous = self.config._attn_implementation
        self.config._attn_implementation = self._attn_name
        try:
            with torch.inference_mode():
                yield
        finally:
            self.config._attn_implementation = previous

    def _alloc_rows(self, n: int) -> list[int]:
        if n > len(self._free_rows):
            raise ValueError(
                f"batch: {n} new rows requested but only {len(self._free_rows)} of max_batch={self.max_batch} are "
                "free (release() conversations you are done with, or raise max_batch)"
            )
        rows, self._free_rows = self._free_rows[:n], self._free_rows[n:]
        return rows

    def release(self, conv: Conversation) -> None:
        """Give the conversation's cache rows back to the engine."""
        if not conv.released:
            self._free_rows = sorted(self._free_rows + conv.rows)
            conv.released = True

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def _as_token_lists(self, name, seqs, n=None) -> list[list[int]]:
        if isinstance(seqs, torch.Tensor):
            if seqs.dim() == 1:
                seqs = seqs[None]
            seqs = seqs.tolist()
        if isinstance(seqs, str):
            seqs = [seqs]
        if not isinstance(seqs, (list, tuple)) or len(seqs) == 0:
            raise ValueError(f"{name}: expected a non-empty list of token-id lists (or strings)")
        if all(isinstance(t, int) for t in seqs):
            seqs = [list(seqs)] * (n or 1)  # one turn for every row
        out = []
        for i, s in enumerate(seqs):
            if isinstance(s, str):
                if self.tokenizer is None:
                    raise ValueError(f"{name}: got text but the engine has no tokenizer")
                s = self.tokenizer(s, add_special_tokens=False)["input_ids"]
            if isinstance(s, torch.Tensor):
                s = s.tolist()
            s = [int(t) for t in s]
            V = self.config.vocab_size
            if any(t < 0 or t >= V for t in s):
                raise ValueError(f"{name}: row {i} has token ids outside [0, {V})")
            out.append(s)
        if n is not None and len(out) != n:
            raise ValueError(f"{name}: expected {n} rows (one per conversation row), got {len(out)}")
        return out

    def _forward(self, input_ids, position_ids, plan, logits_to_keep=0):
        with active_plan(plan):
            out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=True,
                             logits_to_keep=logits_to_keep, rollout_plan=plan, **{self._cache_arg: self.cache})
        return out.logits

    # ------------------------------------------------------------------------------------------------------------
    # prefill (start / extend)
    # ------------------------------------------------------------------------------------------------------------
    def _prefill(self, conv: Conversation, seqs: list[list[int]]) -> None:
        """Feed ``seqs[b]`` to row ``b`` (after its cached tokens) in one packed forward; keep next-token logits."""
        ids, rows, positions, segments, last = [], [], [], [], []
        start = 0
        for b, s in enumerate(seqs):
            row, pos0, n = conv.rows[b], conv.cached[b], len(s)
            if n == 0:
                raise ValueError(f"extend: row {b} has no new tokens")
            if pos0 + n > self.max_seq_len:
                raise ValueError(
                    f"prompts: row {b} needs {pos0 + n} cache positions, over max_seq_len={self.max_seq_len}"
                )
            ids.extend(s)
            rows.extend([row] * n)
            positions.extend(range(pos0, pos0 + n))
            segments.append((row, start, n, pos0))
            start += n
            last.append(start - 1)
        dev = self.device
        plan = StepPlan(rows=torch.tensor(rows, device=dev), positions=torch.tensor(positions, device=dev),
                        segments=segments, attention_backend=self.attention_backend)
        with self._engine_attention():
            logits = self._forward(torch.tensor([ids], device=dev), plan.positions[None], plan,
                                   logits_to_keep=torch.tensor(last, device=dev))
        conv.next_logits = logits[0]
        conv.cached = [c + len(s) for c, s in zip(conv.cached, seqs)]
        conv.pending = None

    def start(self, prompts) -> Conversation:
        """Start one conversation per prompt: allocate cache rows and prefill the prompts (ragged, unpadded).

        Args:
            prompts: list of token-id lists (or strings, with a tokenizer), or an ``[n, L]`` int tensor.
        """
        seqs = self._as_token_lists("prompts", prompts)
        if len(seqs) > self.max_batch:
            raise ValueError(f"prompts: batch of {len(seqs)} is over max_batch={self.max_batch}")
        for i, s in enumerate(seqs):
            if len(s) == 0:
                raise ValueError(f"prompts: prompt {i} is empty")
            if len(s) >= self.max_seq_len:
                raise ValueError(
                    f"prompts: prompt {i} has {len(s)} tokens; max_seq_len={self.max_seq_len} leaves no room to "
                    "generate"
                )
        rows = self._alloc_rows(len(seqs))
        conv = Conversation(self, rows, [list(s) for s in seqs], [0] * len(rows),
                            rows_t=torch.tensor(rows, device=self.device))
        try:
            self._prefill(conv, seqs)
        except BaseException:
            self.release(conv)
            raise
        return conv

    def extend(self, conv: Conversation, new_turn_token_ids) -> Conversation:
        """Append the other speaker's turn to every row and prefill only the new tokens.

        Args:
            new_turn_token_ids: one token-id list (or string) per row, or one list for every row.
        """
        self._check_live(conv)
        seqs = self._as_token_lists("new_turn_token_ids", new_turn_token_ids, n=conv.size)
        feed = seqs
        if conv.pending is not None:
            pend = conv.pending.tolist()
            feed = [[p] + s for p, s in zip(pend, seqs)]
        self._prefill(conv, feed)
        for hist, s in zip(conv.token_ids, seqs):
            hist.extend(s)
        return conv

    def fork(self, conv: Conversation, num_copies: int) -> Conversation:
        """A conversation of ``len(conv) * num_copies`` rows: copy ``g`` of row ``b`` is row ``b * num_copies + g``.

        The rows' caches are copied (memory copies, no model compute); ``conv`` stays usable (``release`` it if done).
        """
        self._check_live(conv)
        if not isinstance(num_copies, int) or num_copies < 1:
            raise ValueError(f"num_copies: expected an int >= 1, got {num_copies!r}")
        n = conv.size * num_copies
        rows = self._alloc_rows(n)
        src = conv.rows_t.repeat_interleave(num_copies)
        dst = torch.tensor(rows, device=self.device)
        upto = max(conv.cached) + (1 if conv.pending is not None else 0)
        upto = min(upto, self.max_seq_len)
        with torch.inference_mode():
            for K, V in zip(self.cache.k, self.cache.v):
                K[dst, :, :upto] = K[src, :, :upto]
                V[dst, :, :upto] = V[src, :, :upto]
        rep = lambda t: None if t is None else t.repeat_interleave(num_copies, dim=0)  # noqa: E731
        return Conversation(
            self, rows,
            [list(h) for h in conv.token_ids for _ in range(num_copies)],
            [c for c in conv.cached for _ in range(num_copies)],
            rows_t=dst, pending=rep(conv.pending), next_logits=rep(conv.next_logits),
        )

    def _check_live(self, conv):
        if not isinstance(conv, Conversation) or conv.engine is not self:
            raise ValueError("conv: expected a Conversation started by this engine")
        if conv.released:
            raise ValueError("conv: this conversation was released")

    # ------------------------------------------------------------------------------------------------------------
    # decode
    # ------------------------------------------------------------------------------------------------------------
    def _pick(self, logits, sampling: SamplingConfig, seed):
        """Next token per row from ``logits [B, V]``: ``(tokens, logprobs under sampling, logprobs at T=1)``."""
        if sampling.do_sample:
            tok, lp, _ = sample_with_cutoff(
                logits, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                min_p=sampling.min_p, seed=seed, backend=self.sample_backend,
            )
        else:
            # max(dim) returns the first maximal index as argmax does, and is 3-4x faster than argmax on the CPU.
            tok = logits.max(dim=-1).indices if logits.device.type == "cpu" else torch.argmax(logits, dim=-1)
            lp = torch.zeros(tok.shape, dtype=torch.float32, device=tok.device)
        backend = self._logprob_backend if logits.dtype != torch.float64 else "torch"
        lp1 = torch.ops.smtpo_fast.token_logprobs_fwd(logits, tok, 1.0, -100, False, backend)[0]
        return tok, lp, lp1.float()

    def _decode_step(self, st: _DecodeState, sampling: SamplingConfig, eos: torch.Tensor | None) -> None:
        """One token for every row, in place on ``st`` (no host synchronisation; captured by graphs.py)."""
        plan = StepPlan(rows=st.rows, positions=st.pos, lengths=st.pos + 1,
                        attention_backend=self.attention_backend, direct_cpu=self._direct_cpu_attention)
        logits = self._forward(st.cur[:, None], st.pos[:, None], plan)[:, -1]
        active = ~st.done
        st.pos.add_(active.long())  # ``cur`` is in the cache now, for rows still generating
        tok, lp, lp1 = self._pick(logits, sampling, st.seed)
        st.cur.copy_(torch.where(active, tok, st.cur))
        st.tok.copy_(tok)
        st.lp.copy_(lp)
        st.lp1.copy_(lp1)
        st.active.copy_(active)
        if eos is not None:
            st.done.logical_or_(active & torch.isin(tok, eos))
        st.seed.add_(1)

    def generate(self, conv: Conversation, *, max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, seed: int | None = None, eos_token_id=None,
                 stop_strings: list[str] | None = None) -> RolloutOutput:
        """Generate up to ``max_new_tokens`` per row, continuing the conversation (see ``RolloutOutput``).

        Rows stop at any of ``eos_token_id`` (default the model's / tokenizer's; ``[]`` disables) or when their
        generated text contains one of ``stop_strings`` (checked every ``poll_every`` steps; needs a tokenizer);
        the stop token is part of the output. The last token of each row stays pending: ``extend`` or the next
        ``generate`` feeds it.
        """
        self._check_live(conv)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings: need a tokenizer to detokenise")
        sampling = SamplingConfig(bool(do_sample), float(temperature), top_k, top_p, min_p)
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature: expected > 0 when do_sample=True, got {temperature!r}")
        if conv.pending is not None:  # continuing without an extend: the pending tokens go in first
            self._prefill(conv, [[p] for p in conv.pending.tolist()])
        need = max(conv.cached) + max_new_tokens - 1
        if need > self.max_seq_len:
            raise ValueError(
                f"max_new_tokens: {max_new_tokens} new tokens after {max(conv.cached)} cached ones need {need} "
                f"cache positions, over max_seq_len={self.max_seq_len}"
            )
        eos_ids = self.eos_token_id if eos_token_id is None else eos_token_id
        if isinstance(eos_ids, int):
            eos_ids = [eos_ids]
        dev = self.device
        eos = torch.tensor(list(eos_ids), dtype=torch.int64, device=dev) if eos_ids else None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())

        n = conv.size
        st = _DecodeState(
            cur=torch.empty(n, dtype=torch.int64, device=dev),
            pos=torch.tensor(conv.cached, dtype=torch.int64, device=dev),
            rows=conv.rows_t.clone(),
            done=torch.zeros(n, dtype=torch.bool, device=dev),
            seed=torch.tensor([seed], dtype=torch.int64, device=dev),
            tok=torch.empty(n, dtype=torch.int64, device=dev),
            lp=torch.empty(n, dtype=torch.float32, device=dev),
            lp1=torch.empty(n, dtype=torch.float32, device=dev),
            active=torch.ones(n, dtype=torch.bool, device=dev),
        )
        hist_tok, hist_lp, hist_lp1, hist_active = [], [], [], []
        stop_at = [None] * n     # step at which a stop string ended (host), per row
        checked = 0              # steps already scanned for stop strings
        linears = self._cpu_linears.active() if self._cpu_linears is not None else contextlib.nullcontext()
        with self._engine_attention(), linears:
            tok, lp, lp1 = self._pick(conv.next_logits, sampling, st.seed)
            st.cur.copy_(tok)
            if eos is not None:
                st.done.copy_(torch.isin(tok, eos))
            st.seed.add_(1)
            hist_tok.append(tok), hist_lp.append(lp), hist_lp1.append(lp1), hist_active.append(st.active.clone())
            step_fn = None
            if self._graphs is not None:  # the loop then works on views of the captured bucket's buffers
                st, step_fn = self._graphs.bind(st, sampling, eos, tuple(eos_ids or ()))
            for step in range(1, max_new_tokens):
                if step % self.poll_every == 0:
                    if stop_strings:
                        checked = self._apply_stop_strings(st, conv, hist_tok, hist_active, stop_strings,
                                                           stop_at, checked)
                    if bool(st.done.all()):
                        break
                if step_fn is not None:
                    step_fn()
                else:
                    self._decode_step(st, sampling, eos)
                hist_tok.append(st.tok.clone()), hist_lp.append(st.lp.clone())
                hist_lp1.append(st.lp1.clone()), hist_active.append(st.active.clone())
            if stop_strings:
                self._apply_stop_strings(st, conv, hist_tok, hist_active, stop_strings, stop_at, checked)

        T = len(hist_tok)
        tokens = torch.stack(hist_tok, 1)
        mask = torch.stack(hist_active, 1)
        for b, s in enumerate(stop_at):
            if s is not None:
                mask[b, s + 1:] = False
        tokens = torch.where(mask, tokens, torch.full((), self.pad_token_id, device=dev))
        zeros = torch.zeros((), device=dev)
        logprobs = torch.where(mask, torch.stack(hist_lp, 1), zeros)
        ref_logprobs = torch.where(mask, torch.stack(hist_lp1, 1), zeros)
        if T < max_new_tokens:
            pad = max_new_tokens - T
            tokens = torch.nn.functional.pad(tokens, (0, pad), value=self.pad_token_id)
            mask = torch.nn.functional.pad(mask, (0, pad), value=False)
            logprobs = torch.nn.functional.pad(logprobs, (0, pad))
            ref_logprobs = torch.nn.functional.pad(ref_logprobs, (0, pad))
        num_tokens = mask.sum(1)
        # One host sync per generate call: the conversation's bookkeeping.
        conv.cached = st.pos.tolist()
        conv.pending = st.cur.clone()
        conv.next_logits = None
        for hist, row, k in zip(conv.token_ids, tokens.tolist(), num_tokens.tolist()):
            hist.extend(row[:k])
        return RolloutOutput(tokens, mask, logprobs, ref_logprobs, num_tokens)

    def _apply_stop_strings(self, st, conv, hist_tok, hist_active, stop_strings, stop_at, checked) -> int:
        """Find stop strings in the text generated so far; stop those rows at the token that completed one.

        A stopped row's cache length and pending token are rolled back to that step (the static cache makes this a
        matter of two numbers; positions past the length are simply overwritten later).
        """
        toks = torch.stack(hist_tok, 1).tolist()
        active = torch.stack(hist_active, 1).tolist()
        T = len(toks[0])
        longest = max(len(s) for s in stop_strings)
        fix_rows, fix_pos, fix_cur = [], [], []
        for b in range(len(toks)):
            if stop_at[b] is not None:
                continue
            n_gen = sum(active[b])
            for t in range(max(0, checked - 1), n_gen):
                # Decode a tail wide enough to hold any stop string ending at token t.
                lo = max(0, t - longest - 4)
                tail = self.tokenizer.decode(toks[b][lo:t + 1])
                prev = self.tokenizer.decode(toks[b][lo:t]) if t > lo else ""
                if any(s in tail and s not in prev for s in stop_strings):
                    stop_at[b] = t
                    fix_rows.append(b)
                    fix_pos.append(conv.cached[b] + t)  # tokens 0..t-1 fed, token t pending
                    fix_cur.append(toks[b][t])
                    break
        if fix_rows:
            idx = torch.tensor(fix_rows, device=st.pos.device)
            st.pos[idx] = torch.tensor(fix_pos, device=st.pos.device)
            st.cur[idx] = torch.tensor(fix_cur, device=st.pos.device)
            st.done[idx] = True
        return T
