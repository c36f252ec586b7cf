"""The thin SFT loop shared by the simulator and the recommender.

Loss: mean negative log-likelihood of response tokens, computed from the final hidden states with the fused LM-head
op `linear_token_logprobs` (through `smtpo_fast.integrations.causal_lm_token_logprobs`; no [B, T, V] logits).
One optimizer step = `grad_accum` micro-batches, normalised by the step's total response tokens. The data
position is the global micro-batch index, and the RNG state is captured at every step boundary, so stop + resume
reproduces an uninterrupted run's loss trajectory exactly."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..integrations import causal_lm_token_logprobs
from .checkpoint import capture_rng, is_peft, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .config import SFTConfig
from .data import IGNORE_INDEX, BatchPlan, collate, tokenize_example


class CosineWithWarmup:
    """LR multiplier: linear warmup to 1, then cosine to `min_ratio` at `total` steps. A callable object (not a
    closure) so LambdaLR's state_dict stores its fields and the schedule survives a resume."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(1, total), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    """Loss of every optimizer step of the run, resumed steps included."""
    steps: int = 0
    interrupted: bool = False
    checkpoint: Path | None = None
    seconds: float = 0.0
    tokens: int = 0
    out_of_time: bool = False
    """Stopped by `max_minutes` before max_steps."""


def sequence_loss(model, batch, autocast) -> tuple[torch.Tensor, int]:
    """Summed response-token NLL of a batch (float32 scalar) and its token count."""
    with autocast:
        # From the final hidden states and the LM head weight (linear_token_logprobs), on response positions only:
        # the [B, T, V] logits are never built.
        logp = causal_lm_token_logprobs(model, batch.input_ids, batch.attention_mask, labels=batch.labels,
                                        ignore_index=IGNORE_INDEX)
    return -logp.sum(), batch.num_response_tokens


@torch.no_grad()
def response_nll(model, tokenizer, examples: list[dict], batch_size: int = 8, max_length: int = 512) -> tuple[float, int]:
    """(summed NLL, tokens) of the responses of chat examples (`{"messages": [...]}`); perplexity is
    exp(NLL / tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    tokenised = [tokenize_example(tokenizer, e["messages"], max_length) for e in examples]
    total, count = 0.0, 0
    for start in range(0, len(tokenised), batch_size):
        batch = collate(tokenised[start:start + batch_size], pad).to(device)
        nll, n = sequence_loss(model, batch, nullcontext())
        total, count = total + float(nll), count + n
    model.train(was_training)
    return total, count


class SFTTrainer:
    """Supervised fine-tuning of a causal LM (full or peft) on chat examples.

    `examples`: list of `{"messages": [{"role", "content"}, ...]}` whose last message is the assistant response
    (or pre-tokenised `{"input_ids", "labels"}`). Writes to `config.output_dir`: `checkpoints/step-*`,
    `tensorboard/`, `loss_curve.png`, and `final/` (HF folder, or the adapter) when training completes."""

    def __init__(self, model, tokenizer, examples: list[dict], config: SFTConfig | None = None):
        self.config = config or SFTConfig()
        cfg = self.config
        self.tokenizer = tokenizer
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if cfg.device == "auto" else cfg.device)
        self.model = model.to(self.device)
        self.examples = [e if "input_ids" in e else tokenize_example(tokenizer, e["messages"], cfg.max_length)
                         for e in examples]
        self.plan = BatchPlan(self.examples, cfg.batch_size, tokenizer.pad_token_id, seed=cfg.seed,
                              packing=cfg.packing, max_length=cfg.max_length, bucket_size=cfg.bucket_size)
        steps_per_epoch = max(1, self.plan.batches_per_epoch // cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
        self.planned_steps = self.total_steps
        """The configured length; a time budget fits `total_steps` at or below it."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, CosineWithWarmup(cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio))
        self.output = Path(cfg.output_dir)
        self.step = 0
        self.micro_step = 0
        self.losses: list[float] = []
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.step_seconds: deque[float] = deque(maxlen=20)  # the recent steps' durations (the budget's speed)
        self._stop_requested = False

    # -- state ---------------------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"step": self.step, "micro_step": self.micro_step, "losses": self.losses, "tokens": self.tokens_seen,
                "elapsed": self.elapsed, "total_steps": self.total_steps, "config": asdict(self.config)}

    def save(self, rng: dict | None = None) -> Path:
        path = save_checkpoint(self.output / "checkpoints", self.step, self.model, self.optimizer, self.scheduler,
                               rng or capture_rng(), self._trainer_state(), keep=self.config.keep_checkpoints)
        self.plot_losses()
        return path

    def resume(self, folder: str | Path | None = None) -> bool:
        """Load `folder` or the latest checkpoint of output_dir; False when there is none."""
        folder = Path(folder) if folder else latest_checkpoint(self.output / "checkpoints")
        if folder is None:
            return False
        state, rng = load_checkpoint(folder, self.model, self.optimizer, self.scheduler)
        self.step, self.micro_step = state["step"], state["micro_step"]
        self.losses, self.tokens_seen, self.elapsed = list(state["losses"]), state["tokens"], state["elapsed"]
        if self.config.max_minutes:  # a budget-fitted schedule continues as fitted (the next step refits it)
            self.total_steps = min(self.total_steps, state["total_steps"])
        restore_rng(rng)
        return True

    def plot_losses(self) -> Path | None:
        if not self.losses:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, len(self.losses) + 1), self.losses, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("response-token NLL")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.output / "loss_curve.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save_final(self) -> Path:
        final = self.output / "final"
        self.model.save_pretrained(final)
        self.tokenizer.save_pretrained(final)
        return final

    # -- loop ----------------------------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._stop_requested = True

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return (what Ctrl-C does)."""
        self._stop_requested = True

    def _fit_schedule_to_budget(self, budget_s: float, bar) -> None:
        """Fit total_steps to the steps the time budget allows, between the current step and the configured
        total: the time left at the speed of the recent steps (not the mean since the start, which counts
        start-up work such as kernel compilation: on a GPU the first steps' compilation once shrank 960
        affordable steps to 256), so the cosine still reaches its floor when the budget ends. It grows back
        when the speed recovers: a slow stretch (another job on a shared CPU) once cut a simulator run that had
        8 minutes to 262 of its 600 steps, finished in 2. The schedule object is in the scheduler's state, so a
        resume continues the fitted schedule."""
        recent = self.step_seconds or [self.elapsed / max(self.step, 1)]
        per_step = max(sum(recent) / len(recent), 1e-9)
        projected = self.step + int(max(0.0, budget_s - self.elapsed) / per_step)
        fitted = min(self.planned_steps, max(self.step, projected))
        if fitted != self.total_steps:
            self.total_steps = fitted
            self.scheduler.lr_lambdas[0].total = self.total_steps
            bar.total = self.total_steps

    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run to `total_steps` (resuming first when `config.resume`). `stop_after`: save and return after this
        many steps of this call, as if interrupted (the tests' kill-and-resume)."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config
        if cfg.resume:
            self.resume()
        if self.step == 0:  # a fresh run; a resumed one has just restored its RNG states
            torch.manual_seed(cfg.seed)
        self.model.train()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and self.device.type == "cuda"
                    else torch.autocast("cpu", dtype=torch.bfloat16) if cfg.cpu_bf16 and self.device.type == "cpu"
                    else nullcontext())
        writer = SummaryWriter(str(self.output / "tensorboard"), purge_step=self.step or None)
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._stop_requested = False
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not cfg.progress, dynamic_ncols=True)
        result = TrainResult()
        steps_this_call, interrupted = 0, False
        window_tokens, window_start = 0, time.perf_counter()
        try:
            while self.step < self.total_steps:
                if self._stop_requested or (stop_after is not None and steps_this_call >= stop_after):
                    interrupted = True
                    break
                if cfg.max_minutes and self.elapsed >= cfg.max_minutes * 60:  # a slow last stretch
                    result.out_of_time = True
                    break
                start = time.perf_counter()
                batches = [self.plan.batch(self.micro_step + i).to(self.device) for i in range(cfg.grad_accum)]
                step_tokens = max(1, sum(b.num_response_tokens for b in batches))
                step_loss = 0.0
                for batch in batches:
                    nll, _ = sequence_loss(self.model, batch, autocast)
                    loss = nll / step_tokens
                    loss.backward()
                    step_loss += float(loss.detach())
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                             if cfg.max_grad_norm > 0 else None)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.micro_step += cfg.grad_accum
                steps_this_call += 1
                tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
                self.tokens_seen += tokens
                window_tokens += tokens
                took = time.perf_counter() - start
                self.elapsed += took
                self.step_seconds.append(took)
                self.losses.append(step_loss)
                bar.update(1)
                if cfg.max_minutes and self.step >= max(cfg.warmup_steps, 5):
                    self._fit_schedule_to_budget(cfg.max_minutes * 60, bar)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    tok_s = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    recent = self.losses[-cfg.log_every:]
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", tok_s=f"{tok_s:,.0f}")
                    writer.add_scalar("train/loss", step_loss, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar("train/tokens_per_s", tok_s, self.step)
                    if grad_norm is not None:
                        writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    result.checkpoint = self.save()
        finally:
            bar.close()
            writer.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        result.checkpoint = self.save()
        if not interrupted:
            self.save_final()
        result.losses, result.steps, result.interrupted = list(self.losses), self.step, interrupted
        result.seconds, result.tokens = self.elapsed, self.tokens_seen
        return result
