"""`smtpo run`: the whole SMTPO pipeline, data -> retriever -> simulator SFT -> recommender SFT -> RL (+ ablations)
-> evaluation -> `runs/<name>/report.md`.

Every stage writes into its own folder under the run and records a key (a hash of its settings and of the keys
of the stages it reads) in `stage.json` when it completes; a stage whose key is unchanged is skipped, one whose
key changed starts over, and an interrupted trainer resumes from its last checkpoint. So a killed run continues
where it stopped, and editing one setting redoes only what depends on it.

Also registers `smtpo eval recommender` (evaluate a run's models, or any model folder, on any test file)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.synth import SynthConfig
from .models.presets import TinyConfig
from .recommender.prompt import INSTRUCTION, SYSTEM, PromptConfig
from .recommender.rewards import RewardConfig
from .recommender.rl import RLConfig
from .retriever.retriever import RetrieverConfig
from .train.config import SFTConfig

ABLATIONS = {
    "no_preference_reward": "RL without the preference reward",
    "single_turn": "single-turn RL (T = 1)",
    "untuned_simulator": "RL against the un-tuned (prompted) simulator",
    "target_aware_simulator": "RL against the target-aware simulator",
}


@dataclass
class EvalConfig:
    """What the evaluation stage measures."""

    max_static_turns: int = 0
    """Test turns for static metrics (0: all)."""
    max_interactive: int = 60
    """Test turns that start an interactive conversation (0: all)."""
    interactive_turns: int = 5
    """Turns per interactive conversation."""
    simulator_max_new_tokens: int = 48
    """Longest simulator reply."""
    recommender_max_new_tokens: int = 112
    """Longest recommender answer."""
    transfer_file: str = ""
    """A second test file (e.g. inspired/dev.tsv, relative to data_dir unless absolute) evaluated statically with
    the same models; '' for none."""
    max_transfer_turns: int = 0
    """Turns of the transfer file evaluated (0: all)."""


@dataclass
class PipelineConfig:
    """Settings of `smtpo run` (YAML: the top-level fields, plus one mapping per section)."""

    name: str = "default"
    """Run name: everything goes to runs/<name>/."""
    runs_dir: str = "runs"
    """Parent folder of runs."""
    preset: str = "tiny"
    """Base model: 'tiny' (built from scratch), 'smollm2-135m' or an HF folder."""
    data_dir: str = ""
    """Data folder with redial/ (and inspired/); 'auto' is $SMTPO_DATA_DIR or ../shared/data; '' generates
    synthetic data (offline)."""
    train_file: str = "redial/train_sample.jsonl"
    """Training dialogues, relative to data_dir."""
    test_file: str = "redial/test_public.jsonl"
    """Test dialogues, relative to data_dir."""
    max_train_turns: int = 0
    """Cap on training recommendation turns used by SFT and RL (0: all)."""
    ablations: list = field(default_factory=list)
    """Extra RL runs, each evaluated like SFT + RL: any of no_preference_reward, single_turn, untuned_simulator,
    target_aware_simulator."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda' for every trainer."""
    seed: int = 0
    """Seed of everything."""
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(n_movies=200, n_dialogues=600))
    tiny: TinyConfig = field(default_factory=TinyConfig)
    retriever: RetrieverConfig = field(default_factory=lambda: RetrieverConfig(folds=1, epochs=8))
    # The defaults fit the 20-minute budget on 2 CPU cores: short SFT, 10 candidates (half the prompt), few RL
    # steps, and a sample of the test turns. configs/redial.yaml sets the full sizes.
    simulator_sft: SFTConfig = field(default_factory=lambda: SFTConfig(max_steps=150, batch_size=8, lr=3e-3,
                                                                        warmup_steps=10, max_length=384))
    # Reasoning answers are ~80-100 tokens with the tiny tokenizer and prompts ~450: the caps leave room for both.
    recommender_sft: SFTConfig = field(default_factory=lambda: SFTConfig(max_steps=250, batch_size=8, lr=3e-3,
                                                                          warmup_steps=10, max_length=576))
    rl: RLConfig = field(default_factory=lambda: RLConfig(steps=12, episodes_per_step=4, group_size=4, lr=2e-4,
                                                          max_new_tokens=112, max_prompt_tokens=480, save_every=2))
    rewards: RewardConfig = field(default_factory=RewardConfig)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(num_candidates=10))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_static_turns=100, max_interactive=40,
                                                                recommender_max_new_tokens=112))


SECTIONS = {"synth", "tiny", "retriever", "simulator_sft", "recommender_sft", "rl", "rewards", "prompt", "eval"}


def load_config(path: str | Path | None = None, **overrides) -> PipelineConfig:
    """A `PipelineConfig` from a YAML (or JSON) file (unknown keys are errors naming them) and top-level
    overrides (None values ignored)."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) if path else {}
    return config_from_dict(values or {}, str(path or "config"), **overrides)


def config_from_dict(values: dict, path: str = "config", **overrides) -> PipelineConfig:
    config = PipelineConfig()
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of pipeline settings")
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    for key, value in {**values, **{k: v for k, v in overrides.items() if v is not None}}.items():
        if key not in known:
            raise ValueError(f"{path or 'config'}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        if key in SECTIONS:
            section = getattr(config, key)
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {key} must be a mapping")
            names = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(value) - names)
            if bad:
                raise ValueError(f"{path}: unknown {key} setting(s): {', '.join(bad)}")
            setattr(config, key, dataclasses.replace(section, **value))
        else:
            setattr(config, key, value)
    bad = [a for a in config.ablations if a not in ABLATIONS]
    if bad:
        raise ValueError(f"ablations: unknown {bad}; choose from {sorted(ABLATIONS)}")
    return config


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, config: PipelineConfig, log=print, only: list[str] | None = None):
        self.config = config
        self.only = set(only) if only else None
        """RL stages to run (their prerequisites are reused from the cache or run); None: every stage and the
        report. Lets independent RL runs go in separate processes."""
        self.root = Path(config.runs_dir) / config.name
        self.log = log
        self.keys: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._cache: dict = {}
        self.stage_index = 0
        self.stage_count = 7 + len(config.ablations)

    # -- stage bookkeeping ---------------------------------------------------------------------------------------
    def stage(self, name: str, key_parts, run) -> Path:
        """Run `run(folder)` unless `folder/stage.json` holds the same key."""
        self.stage_index += 1
        folder = self.root / name
        key = _key(*key_parts)
        self.keys[name] = key
        marker = folder / "stage.json"
        header = f"[{self.stage_index}/{self.stage_count}] {name}"
        if marker.exists() and json.loads(marker.read_text()).get("key") == key:
            self.log(f"{header}: cached ({folder})")
            self.timings[name] = json.loads(marker.read_text()).get("seconds", 0.0)
            return folder
        partial = folder / "partial.json"
        if folder.exists() and not (partial.exists() and json.loads(partial.read_text()).get("key") == key):
            shutil.rmtree(folder)  # settings changed: start this stage over
        folder.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"key": key}))
        self.log(f"{header}: running -> {folder}")
        start = time.time()
        run(folder)
        seconds = time.time() - start
        self.timings[name] = seconds
        marker.write_text(json.dumps({"key": key, "seconds": seconds}))
        self.log(f"{header}: done in {seconds:.0f}s")
        return folder

    # -- shared objects ------------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self.config.data_dir == "auto":
            from .data.paths import data_dir

            return data_dir()
        return Path(self.config.data_dir) if self.config.data_dir else self.root / "data" / "synthetic"

    def catalog(self):
        if "catalog" not in self._cache:
            from .data.catalog import load_catalog

            self._cache["catalog"] = load_catalog(self.data_dir)
        return self._cache["catalog"]

    def turns(self, which: str) -> list[dict]:
        if which not in self._cache:
            from .data.turns import iter_turns

            path = self.data_dir / (self.config.train_file if which == "train" else self.config.test_file)
            turns = list(iter_turns(path, self.catalog()))
            if which == "train" and self.config.max_train_turns:
                turns = turns[:self.config.max_train_turns]
            self._cache[which] = turns
        return self._cache[which]

    def retriever(self):
        if "retriever" not in self._cache:
            from .retriever.retriever import DualViewRetriever

            self._cache["retriever"] = DualViewRetriever.load(self.root / "retriever" / "model", self.catalog())
        return self._cache["retriever"]

    def candidate_fn(self):
        """Candidates for training turns (SFT traces, RL episodes): the retriever with the training dialogues
        held out (`DualViewRetriever.hold_out`), so a query carrying a training `dialogue_id` gets the candidates
        an unseen dialogue would get, not ones picked by co-mentions counted from its own dialogue."""
        if "training_retriever" not in self._cache:
            from .retriever.retriever import DualViewRetriever

            self._cache["training_retriever"] = DualViewRetriever.load(
                self.root / "retriever" / "model", self.catalog()).hold_out(self.turns("train"))
        retriever, k = self._cache["training_retriever"], self.config.prompt.num_candidates

        def candidates(queries):
            return retriever.topk(queries, k)[0]
        return candidates

    def load(self, folder, **kwargs):
        from .models import load_model

        return load_model(Path(folder), **kwargs)

    def simulator(self, folder, mode: str):
        from .simulator import GenerationConfig, UserSimulator

        model, tokenizer = self.load(folder, device=self._device())
        return UserSimulator(model, tokenizer, self.catalog(), mode,
                             GenerationConfig(max_new_tokens=self.config.eval.simulator_max_new_tokens))

    def _device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.config.device == "auto" else self.config.device

    # -- the stages ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.config
        start = time.time()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))

        def data_stage(folder):
            if not cfg.data_dir:
                from .data.synth import generate

                generate(folder / "synthetic", dataclasses.replace(cfg.synth, seed=cfg.synth.seed or cfg.seed))
        data_inputs = ([asdict(cfg.synth)] if not cfg.data_dir
                       else [str(self.data_dir), cfg.train_file, cfg.test_file])
        self.stage("data", data_inputs, data_stage)

        def retriever_stage(folder):
            from .retriever.retriever import DualViewRetriever

            retriever = DualViewRetriever(self.catalog(), cfg.retriever).fit(self.turns("train"), progress=True)
            retriever.save(folder / "model")
        self.stage("retriever", [self.keys["data"], asdict(cfg.retriever)], retriever_stage)

        def base_stage(folder):
            if cfg.preset == "tiny":
                from .models import build_tiny, corpus_texts
                from .simulator.tasks import FEEDBACK_INSTRUCTION, LABEL_FREE_SYSTEM, TARGET_AWARE_SYSTEM

                texts = corpus_texts([self.data_dir / cfg.train_file], self.catalog(),
                                     [SYSTEM, INSTRUCTION, LABEL_FREE_SYSTEM, TARGET_AWARE_SYSTEM,
                                      FEEDBACK_INSTRUCTION])
                build_tiny(folder / "model", texts, cfg.tiny)
            else:
                from .models import resolve_model

                (folder / "model.txt").write_text(str(resolve_model(cfg.preset)))
        self.stage("base_model", [self.keys["data"], cfg.preset, asdict(cfg.tiny) if cfg.preset == "tiny" else ""],
                   base_stage)
        base = self.base_model_path()

        def simulator_stage(folder):
            from .simulator import LABEL_FREE, TARGET_AWARE, build_examples
            from .train import SFTTrainer

            train = self.data_dir / cfg.train_file
            examples = (build_examples(train, self.catalog(), LABEL_FREE)
                        + build_examples(train, self.catalog(), TARGET_AWARE))
            model, tokenizer = self.load(base)
            SFTTrainer(model, tokenizer, examples, dataclasses.replace(
                cfg.simulator_sft, output_dir=str(folder), device=cfg.device, seed=cfg.seed)).train()
        self.stage("simulator_sft", [self.keys["base_model"], asdict(cfg.simulator_sft)], simulator_stage)

        def recommender_stage(folder):
            from .recommender.traces import reasoning_examples
            from .train import SFTTrainer

            examples = reasoning_examples(self.turns("train"), self.catalog(), self.candidate_fn(), cfg.prompt,
                                          seed=cfg.seed)
            model, tokenizer = self.load(base)
            SFTTrainer(model, tokenizer, examples, dataclasses.replace(
                cfg.recommender_sft, output_dir=str(folder), device=cfg.device, seed=cfg.seed)).train()
        self.stage("recommender_sft", [self.keys["base_model"], self.keys["retriever"], asdict(cfg.recommender_sft),
                                       asdict(cfg.prompt), "held-out training candidates"], recommender_stage)

        rl_runs = {"rl": None, **{f"rl_{a}": a for a in cfg.ablations}}
        for name, ablation in rl_runs.items():
            if self.only is not None and name not in self.only:
                continue
            self.stage(name, [self.keys["recommender_sft"], self.keys["simulator_sft"], asdict(cfg.rl),
                              asdict(cfg.rewards), ablation], lambda folder, a=ablation: self.rl_stage(folder, a))

        if self.only is not None:
            self.log(f"done: {', '.join(sorted(self.only))} (--only: no evaluation or report)")
            return self.root
        self.stage("eval", [self.keys[n] for n in ("retriever", "base_model", "recommender_sft", *rl_runs)]
                   + [asdict(cfg.eval), asdict(cfg.prompt)], lambda folder: self.eval_stage(folder, rl_runs))
        report = self.write_report(rl_runs, time.time() - start)
        self.log(f"report: {report}")
        return report

    def base_model_path(self) -> Path:
        folder = self.root / "base_model"
        return folder / "model" if (folder / "model").exists() else Path((folder / "model.txt").read_text())

    def rl_stage(self, folder: Path, ablation: str | None) -> None:
        from .recommender.rl import GRPOTrainer
        from .simulator import LABEL_FREE, TARGET_AWARE

        cfg = self.config
        rl = dataclasses.replace(cfg.rl, output_dir=str(folder), device=cfg.device, seed=cfg.seed)
        rewards = cfg.rewards
        simulator_model, mode = self.root / "simulator_sft" / "final", LABEL_FREE
        if ablation == "no_preference_reward":
            rewards = dataclasses.replace(rewards, pref_weight=0.0)
        elif ablation == "single_turn":
            rl = dataclasses.replace(rl, max_turns=1)
        elif ablation == "untuned_simulator":
            simulator_model = self.base_model_path()
        elif ablation == "target_aware_simulator":
            mode = TARGET_AWARE
            rl = dataclasses.replace(rl, simulator_sees_targets=True)
        simulator = self.simulator(simulator_model, mode)
        model, tokenizer = self.load(self.root / "recommender_sft" / "final")
        turns = self.turns("train")
        trainer = GRPOTrainer(model, tokenizer, turns, self.candidate_fn(), simulator, self.catalog(), rl,
                              cfg.prompt, rewards)
        trainer.train()

    def eval_stage(self, folder: Path, rl_runs: dict) -> None:
        from .eval.recommender import (LLMRanker, PopularityRanker, RetrieverRanker, interactive_eval, static_eval,
                                       static_turns, write_predictions)
        from .simulator import TARGET_AWARE

        cfg = self.config
        catalog = self.catalog()
        test = static_turns(self.turns("test"), catalog)
        static_set = test[:cfg.eval.max_static_turns] if cfg.eval.max_static_turns else test
        interactive_set = test[:cfg.eval.max_interactive] if cfg.eval.max_interactive else test
        retriever_ranker = RetrieverRanker(self.retriever())
        methods = [("popularity", "Popularity", PopularityRanker.from_turns(self.turns("train"), catalog)),
                   ("retriever", "Retriever only", retriever_ranker)]
        llm_folders = [("prompted_base", "Prompted base model", self.base_model_path()),
                       ("sft", "SFT only", self.root / "recommender_sft" / "final")]
        llm_folders += [(name, "SFT + RL" if a is None else f"SFT + {ABLATIONS[a]}", self.root / name / "final")
                        for name, a in rl_runs.items()]
        for key, label, path in llm_folders:
            model, tokenizer = self.load(path, device=self._device())
            methods.append((key, label, LLMRanker(model, tokenizer, catalog, retriever_ranker, cfg.prompt,
                                                  cfg.eval.recommender_max_new_tokens, name=key)))
        simulator = self.simulator(self.root / "simulator_sft" / "final", TARGET_AWARE)
        results = {}
        for key, label, ranker in methods:
            self.log(f"  eval {label}")
            started = time.time()
            static, rows = static_eval(ranker, static_set, progress=True)
            write_predictions(folder / f"predictions_static_{key}.jsonl", rows, method=key)
            entry = {"label": label, "static": static}
            if isinstance(ranker, LLMRanker):
                entry["parse_failure_rate"] = ranker.parse_failures / max(1, len(static_set))
            if key not in ("prompted_base",):
                interactive, rows = interactive_eval(ranker, simulator, interactive_set, cfg.eval.interactive_turns,
                                                     catalog=catalog, progress=True)
                write_predictions(folder / f"predictions_interactive_{key}.jsonl", rows, method=key)
                entry["interactive"] = interactive
            entry["seconds"] = time.time() - started
            results[key] = entry
        if cfg.eval.transfer_file:
            from .data.turns import iter_turns

            path = Path(cfg.eval.transfer_file)
            path = path if path.is_absolute() else self.data_dir / path
            transfer = static_turns(list(iter_turns(path, catalog)), catalog)
            if cfg.eval.max_transfer_turns:
                transfer = transfer[:cfg.eval.max_transfer_turns]
            for key, label, ranker in methods:
                self.log(f"  transfer {label}")
                results[key]["transfer"], rows = static_eval(ranker, transfer)
                write_predictions(folder / f"predictions_transfer_{key}.jsonl", rows, method=key)
        (folder / "results.json").write_text(json.dumps(results, indent=1))

    # -- report --------------------------------------------------------------------------------------------------
    def write_report(self, rl_runs: dict, seconds: float) -> Path:
        cfg = self.config
        results = json.loads((self.root / "eval" / "results.json").read_text())
        plots = self.root / "report_plots"
        plots.mkdir(exist_ok=True)
        images = []
        for name in ("simulator_sft", "recommender_sft"):
            png = self.root / name / "loss_curve.png"
            if png.exists():
                shutil.copy(png, plots / f"{name}_loss.png")
                images.append((f"{name} loss", f"report_plots/{name}_loss.png"))
        for name in rl_runs:
            png = self.root / name / "curves.png"
            if png.exists():
                shutil.copy(png, plots / f"{name}_curves.png")
                images.append((f"{name} curves", f"report_plots/{name}_curves.png"))
        T = cfg.eval.interactive_turns
        lines = [f"# SMTPO run `{cfg.name}`", "",
                 f"Preset `{cfg.preset}`, data `{cfg.data_dir or 'synthetic (smtpo data synth)'}`, "
                 f"RL {cfg.rl.steps} steps x {cfg.rl.episodes_per_step} episodes x G={cfg.rl.group_size}, "
                 f"T={cfg.rl.max_turns}; total wall time of this invocation {seconds / 60:.1f} min.", "",
                 "## Recommendation quality", "",
                 f"Static: every recommendation turn of `{cfg.test_file}` with a context and a new target "
                 f"(one sample per (turn, target) pair). Interactive: {T}-turn conversations with the target-aware "
                 "simulator from the first test turns; success = target ranked first.", "",
                 "| Method | R@1 | R@10 | R@50 | NDCG@10 | inter. R@1 | inter. R@10 | success@1 | "
                 f"success@{T} | parse fail |", "|---|" + "---:|" * 9]
        for key, r in results.items():
            s, i = r["static"], r.get("interactive")
            inter = (f"{i[f'recall@1@{T}']:.3f} | {i[f'recall@10@{T}']:.3f} | {i['success@1']:.3f} | "
                     f"{i[f'success@{T}']:.3f}") if i else "- | - | - | -"
            fail = f"{r['parse_failure_rate']:.2f}" if "parse_failure_rate" in r else "-"
            lines.append(f"| {r['label']} | {s['recall@1']:.3f} | {s['recall@10']:.3f} | {s['recall@50']:.3f} | "
                         f"{s['ndcg@10']:.3f} | {inter} | {fail} |")
        first = next(iter(results.values()))["static"]
        lines += ["", f"{first['turns']} static turns ({first['pairs']} pairs).", ""]
        if any("transfer" in r for r in results.values()):
            lines += ["## Transfer", "", f"Static metrics on `{cfg.eval.transfer_file}`.", "",
                      "| Method | R@1 | R@10 | R@50 | NDCG@10 |", "|---|---:|---:|---:|---:|"]
            for r in results.values():
                t = r["transfer"]
                lines.append(f"| {r['label']} | {t['recall@1']:.3f} | {t['recall@10']:.3f} | {t['recall@50']:.3f} | "
                             f"{t['ndcg@10']:.3f} |")
            lines.append("")
        lines += ["## RL", "", "| Run | first-step reward | last-step reward | last KL | last success |",
                  "|---|---:|---:|---:|---:|"]
        for name in rl_runs:
            path = self.root / name / "metrics.jsonl"
            if path.exists():
                rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
                if rows:
                    lines.append(f"| {name} | {rows[0]['reward/total']:.3f} | {rows[-1]['reward/total']:.3f} | "
                                 f"{rows[-1]['kl']:.4f} | {rows[-1]['success']:.2f} |")
        lines += ["", "## Stages", "", "| Stage | seconds (when it ran) |", "|---|---:|"]
        lines += [f"| {name} | {t:.0f} |" for name, t in self.timings.items()]
        lines += ["", "## Plots", ""] + [f"![{alt}]({src})" for alt, src in images]
        report = self.root / "report.md"
        report.write_text("\n".join(lines) + "\n")
        return report


# -- the command line ------------------------------------------------------------------------------------------------
def _run_command(args) -> int:
    config = load_config(args.config, preset=args.preset, name=args.name, data_dir=args.data_dir,
                         runs_dir=args.runs_dir, device=args.device)
    only = [x for x in (args.only or "").split(",") if x]
    bad = [x for x in only if x not in ("rl", *(f"rl_{a}" for a in ABLATIONS))]
    if bad:
        raise SystemExit(f"--only: unknown stage(s) {bad}; choose from rl, "
                         f"{', '.join(f'rl_{a}' for a in ABLATIONS)}")
    report = Pipeline(config, only=only or None).run()
    if not only:
        print(report.read_text())
    return 0


def _eval_command(args) -> int:
    """Evaluate a run's recommender (or --model) statically and interactively on --data."""
    from .eval.recommender import (LLMRanker, RetrieverRanker, interactive_eval, static_eval, static_turns,
                                   write_predictions)
    from .data.turns import iter_turns
    from .simulator import TARGET_AWARE

    config = load_config(Path(args.run) / "config.json", name=Path(args.run).name,
                         runs_dir=str(Path(args.run).parent))
    pipeline = Pipeline(config)
    catalog = pipeline.catalog()
    data = Path(args.data) if args.data else pipeline.data_dir / config.test_file
    turns = static_turns(list(iter_turns(data, catalog)), catalog)
    if args.max_turns:
        turns = turns[:args.max_turns]
    retriever_ranker = RetrieverRanker(pipeline.retriever())
    if args.model == "retriever":
        ranker = retriever_ranker
    elif args.model == "popularity":
        from .eval.recommender import PopularityRanker

        ranker = PopularityRanker.from_turns(pipeline.turns("train"), catalog)
    else:
        folder = Path(args.model) if args.model else Path(args.run) / "rl" / "final"
        model, tokenizer = pipeline.load(folder, device=pipeline._device())
        ranker = LLMRanker(model, tokenizer, catalog, retriever_ranker, config.prompt,
                           config.eval.recommender_max_new_tokens, name=folder.name)
    started = time.time()
    metrics, rows = static_eval(ranker, turns, progress=True)
    print(json.dumps({"static": metrics}, indent=1))
    results = {"model": args.model or "rl", "data": str(data), "static": metrics}
    if hasattr(ranker, "parse_failures"):
        results["parse_failure_rate"] = ranker.parse_failures / max(1, len(turns))
    out_rows = [dict(r, mode="static") for r in rows]
    if args.interactive_turns > 0:
        simulator = pipeline.simulator(Path(args.run) / "simulator_sft" / "final", TARGET_AWARE)
        subset = turns[:args.max_interactive] if args.max_interactive else turns
        inter, rows = interactive_eval(ranker, simulator, subset, args.interactive_turns, catalog=catalog,
                                       progress=True)
        print(json.dumps({"interactive": inter}, indent=1))
        results["interactive"] = inter
        out_rows += [dict(r, mode="interactive") for r in rows]
    results["seconds"] = time.time() - started
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    if args.predictions_out:
        write_predictions(args.predictions_out, out_rows, data=str(data))
    return 0


def add_commands(groups) -> None:
    run = groups.root.add_parser("run", help="the whole pipeline: data -> retriever -> simulator -> recommender SFT "
                                             "-> RL -> evaluation -> runs/<name>/report.md",
                                 description=__doc__.split("\n\n")[0])
    run.add_argument("--config", default=None, help="YAML file of pipeline settings (see configs/)")
    run.add_argument("--preset", default=None, help="tiny | smollm2-135m | PATH (overrides the config)")
    run.add_argument("--name", default=None, help="run name (runs/<name>)")
    run.add_argument("--data-dir", dest="data_dir", default=None, help="data folder ('' = synthetic)")
    run.add_argument("--runs-dir", dest="runs_dir", default=None, help="parent folder of runs")
    run.add_argument("--device", default=None, help="auto | cpu | cuda")
    run.add_argument("--only", default=None, help="comma-separated RL stages (rl, rl_<ablation>) to run, with their "
                     "prerequisites, and stop before evaluation: independent RL runs in parallel processes")
    run.set_defaults(handler=_run_command)
    ev = groups["eval"].add_parser("recommender", help="static + interactive evaluation of a recommender")
    ev.add_argument("--run", required=True, help="a `smtpo run` folder (catalog, retriever, simulator)")
    ev.add_argument("--model", default=None, help="recommender folder, 'retriever' or 'popularity' (default: "
                    "<run>/rl/final)")
    ev.add_argument("--json-out", dest="json_out", default=None, help="write the metrics (static, interactive, "
                    "parse failures, seconds) to this JSON file")
    ev.add_argument("--data", default=None, help="test file, ReDial .jsonl or INSPIRED .tsv (default: the run's)")
    ev.add_argument("--predictions-out", dest="predictions_out", default=None, help="JSON lines per turn")
    ev.add_argument("--interactive-turns", dest="interactive_turns", type=int, default=5,
                    help="turns per interactive conversation (0: static only)")
    ev.add_argument("--max-turns", dest="max_turns", type=int, default=0, help="cap on test turns (0: all)")
    ev.add_argument("--max-interactive", dest="max_interactive", type=int, default=60,
                    help="conversations of the interactive evaluation (0: all)")
    ev.set_defaults(handler=_eval_command)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
