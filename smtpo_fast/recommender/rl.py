"""Multi-turn GRPO of the recommender against a user simulator.

An episode starts from a training recommendation turn. At each of up to `max_turns` turns the candidate function
(the retriever) recalls candidates from the dialogue and the seeker's latest words, the policy samples
`group_size` answers, each is scored against the data's true target (format, recommendation, preference rewards),
and one of them, drawn at random, continues the dialogue: its top items are said to the simulator, whose reply
(it never sees the target when label-free) is appended. The episode ends after `max_turns` or when the continuing
answer ranks the target first.

Credit is per turn: each answer's total reward is group-normalised within its (episode, turn) group
(`grpo_advantages`), placed on the answer's last token (`turn_rewards_to_tokens`) and carried back over its
tokens (`discounted_returns` with gamma 1), so every token of an answer gets its turn's advantage. Loss: clipped
surrogate (`ppo_policy_loss`) plus `kl_coef` times the k3 KL to the frozen SFT policy (`kl_penalty`), log-probs by
the fused `token_logprobs`. Every step logs each reward, KL, clip fraction, entropy, response length and the time
split, to `metrics.jsonl`, TensorBoard and `curves.png`; checkpoints resume exactly (data order is a function of
the seed and the step, the RNG state is saved)."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..ops import discounted_returns, grpo_advantages, kl_penalty, masked_mean, ppo_policy_loss, \
    turn_rewards_to_tokens
from ..simulator.tasks import all_item_attributes
from ..train.data import IGNORE_INDEX
from ..train.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .generation import Sample, generate_answers, pack_samples, packed_behaviour_logprobs, sequence_logprobs
from .parse import parse_answer
from .prompt import PromptConfig, build_prompt, recommendation_utterance
from .rewards import RewardConfig, score_answer
from .traces import candidates_with_target

REWARD_NAMES = ("format", "recommendation", "preference", "total")


@dataclass
class RLConfig:
    """Multi-turn GRPO settings (fields double as `smtpo train recommender-rl` flags)."""

    output_dir: str = "runs/rl"
    """Checkpoints, metrics.jsonl, TensorBoard scalars, curves.png and final/."""
    steps: int = 20
    """Optimizer steps (one batch of episodes each)."""
    episodes_per_step: int = 4
    """Episodes (training turns) rolled out per step."""
    group_size: int = 4
    """Answers sampled per turn (the GRPO group)."""
    max_turns: int = 3
    """Turns per episode (1: the single-turn ablation)."""
    max_new_tokens: int = 112
    """Longest answer (reasoning answers are ~90 tokens with the tiny tokenizer)."""
    rollout_backend: str = "auto"
    """'engine' (the rollout engine: G forks of one prefill, behaviour log-probs from sampling), 'hf' (HF
    generate, then a forward for the behaviour log-probs) or 'auto' (the engine where it supports the model)."""
    rollout_batch_size: int = 16
    """Sequences (prompts x group_size) per generate call."""
    max_prompt_tokens: int = 768
    """Prompts are cut from the left (oldest dialogue first) to this many tokens."""
    temperature: float = 1.0
    """Sampling temperature of rollouts."""
    top_p: float = 1.0
    """Nucleus mass of rollouts."""
    lr: float = 1e-5
    """AdamW learning rate (constant)."""
    clip_low: float = 0.2
    """PPO clip range below 1."""
    clip_high: float = 0.28
    """PPO clip range above 1 (clip-higher)."""
    kl_coef: float = 0.05
    """Weight of the k3 KL to the SFT policy."""
    ppo_epochs: int = 2
    """Passes over each step's rollouts (the second and later are off-policy, where clipping acts)."""
    micro_batch: int = 8
    """Answers per forward/backward."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    ensure_target_in_candidates: bool = True
    """Put the true target among the candidates when the retriever missed it (training only; without it, turns
    whose candidates lack the target give the whole group zero recommendation reward and no signal). An inserted
    target sits at a random position among items the retriever chose for the context, which evaluation never
    shows (there the target is in the candidates only where the retriever put it)."""
    require_target_in_candidates: bool = False
    """Start episodes only from training turns whose first-turn retriever candidates contain the target (with
    `ensure_target_in_candidates` off: RL then sees the candidate lists evaluation sees, and every first turn
    carries a recommendation signal)."""
    simulator_sees_targets: bool = False
    """Pass the episode's targets to the simulator (the target-aware-simulator ablation; SMTPO's label-free
    simulator never sees them)."""
    stop_when_first: bool = True
    """End an episode once the continuing answer ranks the target first."""
    seed: int = 0
    """Seed of episode choice, sampling and the continuing answer."""
    save_every: int = 5
    """Steps between checkpoints (and at the end)."""
    resume: bool = True
    """Continue from the latest checkpoint in output_dir."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""
    progress: bool = True
    """tqdm progress bar."""


@dataclass
class TurnGroup:
    """The G answers of one turn of one episode."""

    episode: int
    turn: int
    samples: list[Sample]
    rewards: list[dict[str, float]]
    candidates: list[str]
    ranked_ids: list[list[str]]


@dataclass
class EpisodeState:
    turn: dict
    context: list[dict]
    mentioned: list[str]
    feedback: str
    liked: set = field(default_factory=set)
    disliked: set = field(default_factory=set)
    done: bool = False
    transcript: list[dict] = field(default_factory=list)


def retrieve_candidates(candidate_fn: Callable[[list[dict]], list[list[str]]], queries: list[dict],
                        num_candidates: int) -> list[list[str]]:
    """`candidate_fn`'s ranking for each query without the items its context mentioned, cut to `num_candidates`."""
    return [[c for c in cands if c not in q["context_item_ids"]][:num_candidates]
            for q, cands in zip(queries, candidate_fn(queries))]


def run_episodes(turns: list[dict], sample_fn: Callable[[list[list[dict]], int], list[list[Sample]]],
                 candidate_fn: Callable[[list[dict]], list[list[str]]], simulator, catalog, rng: random.Random,
                 config: RLConfig, prompt: PromptConfig, rewards: RewardConfig,
                 timing: dict | None = None) -> tuple[list[TurnGroup], list[EpisodeState]]:
    """Roll out one episode per turn record (see the module docstring). `sample_fn(prompts, G)` samples answers;
    `candidate_fn(queries)` ranks candidate ids for `{"context", "context_item_ids", "feedback", "dialogue_id"}`
    queries (the episode's training dialogue, so a held-out retriever can score it out of fold);
    `simulator.respond_batch(dialogues, recommended_lists)` returns `Feedback`s. `timing` accumulates seconds
    under 'rollout', 'retrieval', 'simulator', 'scoring'."""
    timing = timing if timing is not None else {}
    states = [EpisodeState(t, [dict(c) for c in t["context"]], list(t["context_item_ids"]), t.get("feedback", ""))
              for t in turns]
    groups: list[TurnGroup] = []
    for k in range(config.max_turns):
        active = [i for i, s in enumerate(states) if not s.done]
        if not active:
            break
        start = time.perf_counter()
        queries = [{"context": states[i].context, "context_item_ids": states[i].mentioned,
                    "feedback": states[i].feedback, "dialogue_id": states[i].turn.get("dialogue_id")}
                   for i in active]
        candidate_lists = []
        for i, cands in zip(active, retrieve_candidates(candidate_fn, queries, prompt.num_candidates)):
            target = states[i].turn["new_target_ids"][0]
            if config.ensure_target_in_candidates:
                cands = candidates_with_target(cands, target, prompt.num_candidates, rng)
            candidate_lists.append(cands)
        timing["retrieval"] = timing.get("retrieval", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        prompts = [build_prompt(states[i].context, c, catalog, prompt) for i, c in zip(active, candidate_lists)]
        sampled = sample_fn(prompts, config.group_size)
        timing["rollout"] = timing.get("rollout", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        chosen = []
        for i, cands, group in zip(active, candidate_lists, sampled):
            s = states[i]
            targets = [t for t in s.turn["new_target_ids"]]
            target_attrs = set().union(*(all_item_attributes(t, catalog) for t in targets))
            parsed = [parse_answer(x.text, cands) for x in group]
            scored = [score_answer(p, len(cands), targets, target_attrs, lambda j: all_item_attributes(j, catalog),
                                   s.liked, s.disliked, rewards) for p in parsed]
            groups.append(TurnGroup(i, k, group, scored, cands, [p.ranked_ids for p in parsed]))
            pick = rng.randrange(len(group))
            chosen.append((i, parsed[pick].ranked_ids, scored[pick]))
        timing["scoring"] = timing.get("scoring", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        talking = []
        for i, ranked, scored in chosen:
            s = states[i]
            first_hit = bool(ranked) and ranked[0] in s.turn["new_target_ids"]
            s.transcript.append({"turn": k, "ranked_ids": ranked[:rewards.top_n], "rewards": scored})
            if (config.stop_when_first and first_hit) or k == config.max_turns - 1:
                s.done = True
            else:
                talking.append((i, ranked))
        if talking:
            dialogues = [states[i].context + [{"role": "recommender",
                                               "text": recommendation_utterance(r, catalog)}] for i, r in talking]
            targets = ([states[i].turn["new_target_ids"] for i, _ in talking] if config.simulator_sees_targets
                       else None)
            replies = simulator.respond_batch(dialogues, [r[:3] for _, r in talking], targets)
            for (i, ranked), dialogue, fb in zip(talking, dialogues, replies):
                s = states[i]
                s.context = dialogue + [{"role": "seeker", "text": fb.text}]
                s.mentioned += [r for r in ranked[:3] if r not in s.mentioned]
                s.feedback = fb.text
                s.liked |= set(fb.liked_attributes)
                s.disliked |= set(fb.disliked_attributes)
                s.transcript[-1]["reply"] = fb.text
        timing["simulator"] = timing.get("simulator", 0.0) + time.perf_counter() - start
    return groups, states


def token_advantages(groups: list[TurnGroup], response_mask: torch.Tensor) -> torch.Tensor:
    """[B, L-1] float32 advantages for the flattened answers of `groups` (rows in group order), given their
    response mask [B, L-1] bool: GRPO per (episode, turn) group, on every token of the answer."""
    totals = torch.tensor([r["total"] for g in groups for r in g.rewards], dtype=torch.float32)
    group_ids = torch.tensor([n for n, g in enumerate(groups) for _ in g.samples], dtype=torch.long)
    adv = grpo_advantages(totals, group_ids)
    positions = torch.arange(response_mask.shape[1]).expand_as(response_mask)
    last = torch.where(response_mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    token_reward = turn_rewards_to_tokens(adv[:, None], last[:, None], response_mask.shape[1], gamma_turn=0.0)
    return discounted_returns(token_reward, response_mask, gamma=1.0)


class ConstantLR:
    """LambdaLR multiplier 1 (an object so the scheduler state saves)."""

    def __call__(self, step: int) -> float:
        return 1.0


class GRPOTrainer:
    """Multi-turn GRPO (see the module docstring). `model`: the SFT policy (HF causal LM or peft model), copied
    frozen as the KL reference; `turns`: training turn records (`smtpo_fast.data.turns`); `candidate_fn`:
    queries -> ranked candidate ids (e.g. `lambda q: retriever.topk(q, k)[0]`); `simulator`: has
    `respond_batch(dialogues, recommended_lists)` (a `UserSimulator`, label-free for SMTPO)."""

    def __init__(self, model, tokenizer, turns: list[dict], candidate_fn, simulator, catalog,
                 config: RLConfig | None = None, prompt: PromptConfig | None = None,
                 rewards: RewardConfig | None = None):
        self.config = cfg = config or RLConfig()
        self.prompt, self.rewards = prompt or PromptConfig(), rewards or RewardConfig()
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if cfg.device == "auto" else cfg.device)
        self.model = model.to(self.device)
        self.reference = copy.deepcopy(model).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.catalog = tokenizer, catalog
        self.turns = [t for t in turns if t["context"] and t["new_target_ids"]
                      and all(i in catalog for i in t["new_target_ids"][:1])]
        if not self.turns:
            raise ValueError("turns: no training turn has a context and a target in the catalog")
        self.candidate_fn, self.simulator = candidate_fn, simulator
        if cfg.require_target_in_candidates:
            self.turns = self._turns_with_target_retrieved(self.turns)
            if not self.turns:
                raise ValueError("require_target_in_candidates: the candidates of no training turn hold its target")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, ConstantLR())
        self.output = Path(cfg.output_dir)
        self.step = 0
        self.metrics: list[dict] = []

    def _turns_with_target_retrieved(self, turns: list[dict], batch: int = 256) -> list[dict]:
        keep = []
        for lo in range(0, len(turns), batch):
            chunk = turns[lo:lo + batch]
            queries = [{"context": t["context"], "context_item_ids": t["context_item_ids"],
                        "feedback": t.get("feedback", ""), "dialogue_id": t.get("dialogue_id")} for t in chunk]
            for t, cands in zip(chunk, retrieve_candidates(self.candidate_fn, queries, self.prompt.num_candidates)):
                if t["new_target_ids"][0] in cands:
                    keep.append(t)
        return keep

    # -- state ---------------------------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"step": self.step, "metrics": self.metrics, "config": asdict(self.config)}
        path = save_checkpoint(self.output / "checkpoints", self.step, self.model, self.optimizer, self.scheduler,
                               capture_rng(), state)
        self.write_logs()
        return path

    def resume(self) -> bool:
        folder = latest_checkpoint(self.output / "checkpoints")
        if folder is None:
            return False
        state, rng = load_checkpoint(folder, self.model, self.optimizer, self.scheduler)
        self.step, self.metrics = state["step"], list(state["metrics"])
        restore_rng(rng)
        return True

    def write_logs(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        with open(self.output / "metrics.jsonl", "w", encoding="utf-8") as f:
            for m in self.metrics:
                f.write(json.dumps(m) + "\n")
        plot_curves(self.metrics, self.output / "curves.png")

    # -- one step ------------------------------------------------------------------------------------------------
    def sample(self, prompts, group_size):
        return generate_answers(self.model, self.tokenizer, prompts, group_size, self.config.max_new_tokens,
                                self.config.temperature, self.config.top_p, self.config.rollout_batch_size,
                                self.config.max_prompt_tokens, self.config.rollout_backend)

    def train_step(self) -> dict:
        cfg = self.config
        rng = random.Random(cfg.seed * 1_000_003 + self.step)
        batch = rng.sample(self.turns, min(cfg.episodes_per_step, len(self.turns)))
        timing: dict[str, float] = {}
        groups, states = run_episodes(batch, self.sample, self.candidate_fn, self.simulator, self.catalog, rng,
                                      cfg, self.prompt, self.rewards, timing)
        samples = [s for g in groups for s in g.samples]
        start = time.perf_counter()
        ids, attention, labels = pack_samples(samples, self.tokenizer.pad_token_id)
        ids, attention, labels = ids.to(self.device), attention.to(self.device), labels.to(self.device)
        # Behaviour log-probs: the rollout engine's (same weights, temperature 1, no truncation), else a forward.
        behaviour = packed_behaviour_logprobs(samples, ids.shape[1])
        with torch.no_grad():
            old, ref = [], []
            for lo in range(0, len(samples), cfg.micro_batch):
                sl = slice(lo, lo + cfg.micro_batch)
                if behaviour is None:
                    old.append(sequence_logprobs(self.model, ids[sl], attention[sl], labels[sl])[0])
                ref.append(sequence_logprobs(self.reference, ids[sl], attention[sl], labels[sl])[0])
            mask = labels[:, 1:] != IGNORE_INDEX
            ref_logp = torch.cat(ref)
            old_logp = torch.cat(old) if behaviour is None else behaviour.to(self.device)
        advantages = token_advantages(groups, mask.cpu()).to(self.device)
        timing["logprob"] = time.perf_counter() - start
        start = time.perf_counter()
        self.model.train()
        stats = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}
        n_updates = 0
        total_tokens = max(1, int(mask.sum()))
        for _ in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for lo in range(0, len(samples), cfg.micro_batch):
                sl = slice(lo, lo + cfg.micro_batch)
                share = int(mask[sl].sum()) / total_tokens
                if share == 0:
                    continue
                logp, m, entropy = sequence_logprobs(self.model, ids[sl], attention[sl], labels[sl], True)
                pg, pg_stats = ppo_policy_loss(logp, old_logp[sl], advantages[sl], m, clip_low=cfg.clip_low,
                                               clip_high=cfg.clip_high)
                kl = masked_mean(kl_penalty(logp, ref_logp[sl], "k3"), m)
                loss = pg + cfg.kl_coef * kl
                (loss * share).backward()
                stats["loss"] += float(loss.detach()) * share
                stats["pg_loss"] += float(pg.detach()) * share
                stats["kl"] += float(kl.detach()) * share
                stats["clip_frac"] += float(pg_stats["clip_frac"]) * share
                stats["entropy"] += float(masked_mean(entropy.detach(), m)) * share
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            n_updates += 1
        timing["update"] = time.perf_counter() - start
        self.step += 1
        rows = [r for g in groups for r in g.rewards]
        record = {"step": self.step, "answers": len(rows), "turns": len(groups),
                  **{f"reward/{n}": sum(r[n] for r in rows) / len(rows) for n in REWARD_NAMES},
                  **{k: v / max(1, n_updates) for k, v in stats.items()},
                  "response_length": sum(len(s.response_ids) for s in samples) / len(samples),
                  "success": sum(any(t["ranked_ids"][:1] == [s.turn["new_target_ids"][0]] for t in s.transcript)
                                 for s in states) / len(states),
                  **{f"time/{k}": v for k, v in timing.items()}}
        self.metrics.append(record)
        return record

    def train(self, stop_after: int | None = None) -> list[dict]:
        """Run to `config.steps` (resuming first when `config.resume`); `stop_after`: save and return after this
        many steps of this call (the tests' kill-and-resume)."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config
        if cfg.resume:
            self.resume()
        if self.step == 0:
            torch.manual_seed(cfg.seed)
        writer = SummaryWriter(str(self.output / "tensorboard"), purge_step=self.step or None)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, desc="rl", dynamic_ncols=True)
        done_here = 0
        try:
            while self.step < cfg.steps and (stop_after is None or done_here < stop_after):
                record = self.train_step()
                done_here += 1
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(key if "/" in key else f"rl/{key}", value, self.step)
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward/total']:.3f}", kl=f"{record['kl']:.3f}")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save()
        finally:
            bar.close()
            writer.close()
        self.save()
        if self.step >= cfg.steps:
            final = self.output / "final"
            self.model.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        return self.metrics


def plot_curves(metrics: list[dict], path: str | Path) -> Path | None:
    """One panel per logged quantity group: rewards, KL / clip fraction, entropy / length, time split."""
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    panels = [("rewards", [k for k in metrics[-1] if k.startswith("reward/")] + ["success"]),
              ("KL to SFT / clip fraction", ["kl", "clip_frac"]),
              ("entropy / response length", ["entropy", "response_length"]),
              ("seconds per step", [k for k in metrics[-1] if k.startswith("time/")])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(steps, [m.get(key, float("nan")) for m in metrics], lw=1, label=key.split("/")[-1])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if "entropy" in metrics[-1]:
        axes[2].set_yscale("symlog")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
