"""Profile of one multi-turn GRPO step of the recommender: the share of recommender rollout, simulator replies,
log-probs (behaviour + reference policies) and the update (forward + backward + optimizer), with the library's
fused ops against the same step on the plain-torch reference ops (SMTPO_BACKEND=torch), measured in the same run.

Models are randomly initialised Llamas (their answers are noise, so every answer runs to max_new_tokens and the
cost is deterministic): the `tiny` preset shape on CPU, the SmolLM2-135M shape on CUDA.

    python bench/rl_step.py --device cpu --out bench/out/rl_step_cpu.json
    python bench/rl_step.py --device cuda --quick --out bench/out/rl_step.json   # about 1 minute on an H100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The installed package (with its CUDA module) wins; the source tree is the fallback for `PYTHONPATH`-less runs.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchlib import machine_info, print_table, write_json  # noqa: E402

PHASES = ("rollout", "simulator", "logprob", "update")


def build(device: str, root: Path, quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from smtpo_fast.data.catalog import load_catalog
    from smtpo_fast.data.synth import SynthConfig, generate
    from smtpo_fast.data.turns import iter_turns
    from smtpo_fast.models import corpus_texts, train_bpe_tokenizer
    from smtpo_fast.recommender.prompt import INSTRUCTION, SYSTEM

    generate(root, SynthConfig(n_movies=80, n_dialogues=60))
    catalog = load_catalog(root)
    train = root / "redial" / "train_sample.jsonl"
    turns = [t for t in iter_turns(train, catalog) if t["context"] and t["new_target_ids"]]
    tokenizer = train_bpe_tokenizer(corpus_texts([train], catalog, [SYSTEM, INSTRUCTION]), 4096)
    if device == "cuda":  # SmolLM2-135M's shape
        shape = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3)
    else:  # the tiny preset's shape
        shape = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2)
    config = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    policy, sim_model = LlamaForCausalLM(config).to(device), LlamaForCausalLM(config).to(device)
    return catalog, turns, tokenizer, policy, sim_model


def one_variant(backend: str, args, world, rollout: str = "auto") -> dict:
    from smtpo_fast.recommender import PromptConfig, RewardConfig
    from smtpo_fast.recommender.rl import GRPOTrainer, RLConfig
    from smtpo_fast.simulator import GenerationConfig, UserSimulator

    catalog, turns, tokenizer, policy, sim_model = world
    if backend == "torch":
        os.environ["SMTPO_BACKEND"] = "torch"
    else:
        os.environ.pop("SMTPO_BACKEND", None)
    ids = list(catalog.ids)
    simulator = UserSimulator(sim_model, tokenizer, catalog, generation=GenerationConfig(
        max_new_tokens=args.sim_tokens, batch_size=64))
    cfg = RLConfig(output_dir=tempfile.mkdtemp(), steps=10**6, episodes_per_step=args.episodes,
                   group_size=args.group, max_turns=args.turns, max_new_tokens=args.new_tokens,
                   micro_batch=args.micro_batch, ppo_epochs=1, rollout_batch_size=64, resume=False, progress=False,
                   device=args.device, rollout_backend=rollout)
    trainer = GRPOTrainer(policy, tokenizer, turns, lambda q: [ids[:20] for _ in q], simulator, catalog, cfg,
                          PromptConfig(num_candidates=20), RewardConfig())
    for _ in range(args.warmup):
        trainer.train_step()
    records = []
    for _ in range(args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        record = trainer.train_step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        record["wall"] = time.perf_counter() - start
        records.append(record)
    out = {p: sum(r[f"time/{p}"] for r in records) / len(records) for p in PHASES}
    out["other"] = sum(r["wall"] - sum(r[f"time/{p}"] for p in PHASES) for r in records) / len(records)
    out["step"] = sum(r["wall"] for r in records) / len(records)
    out["answers"] = records[-1]["answers"]
    out["response_tokens"] = records[-1]["response_length"] * records[-1]["answers"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="one warm-up and one timed step per variant")
    p.add_argument("--out", default="bench/out/rl_step.json", help="JSON output path ('' to skip)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per step (default cpu 2, cuda 8)")
    p.add_argument("--group", type=int, default=4, help="answers per turn")
    p.add_argument("--turns", type=int, default=2, help="turns per episode")
    p.add_argument("--new-tokens", dest="new_tokens", type=int, default=64, help="answer length")
    p.add_argument("--sim-tokens", dest="sim_tokens", type=int, default=32, help="simulator reply length")
    p.add_argument("--micro-batch", dest="micro_batch", type=int, default=16, help="answers per forward/backward")
    args = p.parse_args()
    args.episodes = args.episodes or (8 if args.device == "cuda" else 2)
    args.warmup, args.steps = (1, 1) if args.quick else (1, 3)
    torch.set_grad_enabled(True)
    with tempfile.TemporaryDirectory() as tmp:
        world = build(args.device, Path(tmp), args.quick)
        results = {"torch": one_variant("torch", args, world, "hf"), "smtpo_hf": one_variant("smtpo", args, world, "hf"),
                   "smtpo": one_variant("smtpo", args, world, "engine")}
    base = results["torch"]["step"]
    rows = []
    labels = {"torch": "torch reference ops, HF generate", "smtpo_hf": "smtpo fused ops, HF generate",
              "smtpo": "smtpo fused ops, rollout engine"}
    for name, r in results.items():
        rows.append({"variant": labels[name], "step": r["step"],
                     "speedup": base / r["step"], **{f"{ph}_share": r[ph] / r["step"] for ph in (*PHASES, "other")},
                     "logprob_s": r["logprob"], "update_s": r["update"]})
    print(f"one GRPO step: {args.episodes} episodes x {args.turns} turns x G={args.group}, {args.new_tokens} answer "
          f"tokens, {args.sim_tokens} simulator tokens; {machine_info(torch.device(args.device))}")
    print_table(rows, [("variant", "variant", ""), ("step", "step s", "{:.2f}"), ("speedup", "vs torch ops", "{:.2f}x"),
                       ("rollout_share", "rollout", "{:.0%}"), ("simulator_share", "simulator", "{:.0%}"),
                       ("logprob_share", "log-prob", "{:.0%}"), ("update_share", "update (fwd+bwd)", "{:.0%}"),
                       ("other_share", "other", "{:.0%}"), ("logprob_s", "log-prob s", "{:.3f}"),
                       ("update_s", "update s", "{:.3f}")])
    write_json(args.out, {"machine": machine_info(torch.device(args.device)), "args": vars(args), "rows": rows,
                          "raw": results})


if __name__ == "__main__":
    main()
