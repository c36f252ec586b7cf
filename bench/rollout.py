"""Rollout engine vs HF ``generate`` on a SmolLM2-135M-shaped model (random weights), same dtype, same run.

Prints a table and writes JSON (``--out``):

* decode throughput per batch size (prompt 256, 128 new tokens, greedy): tokens/s end to end (prefill included)
  and in the decode phase alone, for HF ``generate`` with its dynamic cache, with ``cache_implementation="static"``
  and for ``RolloutEngine``; greedy outputs compared token for token;
* the decode step time against the floor of reading every weight once at the memory read bandwidth measured in
  the same run (decode at small batch is bandwidth-bound);
* a GRPO-style multi-turn episode: G samples sharing a prompt, T turns of simulated user replies and sampled
  answers, with ``fork`` + ``extend`` against HF ``generate`` re-prefilling the whole history every turn.

    python bench/rollout.py --device cpu --batches 1,8 --out rollout_cpu.json
    python bench/rollout.py --device cuda --quick --out rollout_cuda.json      # GPU sizes, CUDA graphs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from smtpo_fast.rollout import RolloutEngine  # noqa: E402

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                    rope_theta=100000, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn, device):
    sync(device)
    t0 = CLOCK()
    out = fn()
    sync(device)
    return CLOCK() - t0, out


def read_bandwidth(device, nbytes=512 << 20, reps=5):
    """Bytes/s of a reduction over a buffer far larger than the caches (the read side of decode)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    x.sum()
    best = float("inf")
    for _ in range(reps):
        dt, _ = timed(lambda: x.sum(), device)
        best = min(best, dt)
    return nbytes / best


def build_model(device, dtype):
    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2_135M)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    model.config._attn_implementation = "sdpa"
    model.generation_config.pad_token_id = 0
    return model


def hf_generate(model, ids, new_tokens, cache, do_sample=False):
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=do_sample, eos_token_id=None,
              pad_token_id=0, attention_mask=torch.ones_like(ids))
    if do_sample:
        kw.update(temperature=1.0, top_k=0, top_p=1.0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    with torch.inference_mode():
        return model.generate(ids, **kw)


def bench_decode(model, device, batches, prompt_len, new_tokens, max_batch, with_static, repeat=1):
    rows = []
    vocab = model.config.vocab_size
    engine = RolloutEngine(model, max_batch=max_batch, max_seq_len=prompt_len + new_tokens + 8)
    for B in batches:
        torch.manual_seed(B)
        ids = torch.randint(3, vocab, (B, prompt_len), device=device)
        # Warm up each path once on a short run (allocator, CUDA graphs, oneDNN primitive caches).
        hf_generate(model, ids[:, :16], 2, "dynamic")
        conv = engine.start(ids[:, :16])
        engine.generate(conv, max_new_tokens=4, eos_token_id=[])
        engine.release(conv)

        # Prefill alone, to split end-to-end time into prefill and decode. With repeat > 1 the HF and engine runs
        # alternate and each time is the best of its runs (a shared machine only ever adds time).
        times = {}
        if with_static:
            hf_generate(model, ids[:, :16], 2, "static")
        for _ in range(repeat):
            def keep(name, t):
                times[name] = min(times.get(name, float("inf")), t)

            keep("hf_prefill_s", timed(lambda: hf_generate(model, ids, 1, "dynamic"), device)[0])
            t_hf, out_hf = timed(lambda: hf_generate(model, ids, new_tokens, "dynamic"), device)
            keep("hf_dynamic_s", t_hf)
            if with_static:
                keep("hf_static_s", timed(lambda: hf_generate(model, ids, new_tokens, "static"), device)[0])
            t_pref, conv = timed(lambda: engine.start(ids), device)
            t_dec, out = timed(lambda: engine.generate(conv, max_new_tokens=new_tokens, eos_token_id=[]), device)
            engine.release(conv)
            keep("engine_prefill_s", t_pref)
            keep("engine_decode_s", t_dec)
        t_hf, t_hf_pref = times["hf_dynamic_s"], times["hf_prefill_s"]
        t_pref, t_dec = times["engine_prefill_s"], times["engine_decode_s"]
        res = {"batch": B, **times, "repeat": repeat}
        res.update(engine_s=t_pref + t_dec, cuda_graphs=bool(engine._graphs is not None and engine._graphs.enabled))
        same = torch.equal(out.tokens.cpu(), out_hf[:, prompt_len:].cpu())
        agree = (out.tokens.cpu() == out_hf[:, prompt_len:].cpu()).float().mean().item()
        ntok = B * new_tokens
        res.update(
            greedy_identical=same, greedy_token_agreement=agree,
            tok_s_hf_dynamic=ntok / t_hf, tok_s_engine=ntok / res["engine_s"],
            speedup_vs_hf_dynamic=t_hf / res["engine_s"],
            hf_decode_step_ms=1e3 * max(t_hf - t_hf_pref, 0.0) / (new_tokens - 1),
            engine_decode_step_ms=1e3 * t_dec / (new_tokens - 1),
        )
        res["decode_speedup_vs_hf_dynamic"] = res["hf_decode_step_ms"] / res["engine_decode_step_ms"]
        if with_static:
            res["tok_s_hf_static"] = ntok / res["hf_static_s"]
            res["speedup_vs_hf_static"] = res["hf_static_s"] / res["engine_s"]
        rows.append(res)
        print(f"  batch {B}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in res.items()), flush=True)
    return rows


def bench_episode(model, device, G, prompt_len, turns, user_len, answer_len, repeat=1):
    """G sampled answers per turn sharing one prompt; (turns - 1) simulated user replies in between."""
    vocab = model.config.vocab_size
    torch.manual_seed(123)
    prompt = torch.randint(3, vocab, (1, prompt_len), device=device)
    users = [torch.randint(3, vocab, (G, user_len), device=device) for _ in range(turns - 1)]
    total = prompt_len + turns * answer_len + (turns - 1) * user_len
    engine = RolloutEngine(model, max_batch=G + 1, max_seq_len=total + 8)

    def run_engine():
        root = engine.start(prompt)
        conv = engine.fork(root, G)
        engine.release(root)
        for t in range(turns):
            engine.generate(conv, max_new_tokens=answer_len, do_sample=True, temperature=1.0, eos_token_id=[],
                            seed=t)
            if t < turns - 1:
                engine.extend(conv, users[t])
        n = max(conv.cached)
        engine.release(conv)
        return n

    def run_hf():
        ids = prompt.expand(G, -1)
        for t in range(turns):
            ids = hf_generate(model, ids, answer_len, "dynamic", do_sample=True)
            if t < turns - 1:
                ids = torch.cat([ids, users[t]], dim=1)
        return ids.shape[1]

    if device.type == "cuda":
        run_engine()  # captures the CUDA graph of this batch bucket outside the timing
    t_eng = t_hf = float("inf")
    for _ in range(repeat):
        t, n_eng = timed(run_engine, device)
        t_eng = min(t_eng, t)
        t, n_hf = timed(run_hf, device)
        t_hf = min(t_hf, t)
    return {"G": G, "prompt": prompt_len, "turns": turns, "user_tokens": user_len, "answer_tokens": answer_len,
            "final_length_engine": n_eng + 1, "final_length_hf": n_hf, "engine_s": t_eng, "hf_generate_s": t_hf,
            "speedup": t_hf / t_eng}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true",
                    help="CUDA: the issue's sizes (batch 1/8/32, prompt 256, 128 new tokens, the 5-turn episode; "
                         "<= 60 s on an H100); CPU: batch 8, 32 new tokens, a 2-turn episode (a smoke run)")
    ap.add_argument("--dtype", default=None,
                    help="float32 | bfloat16 | float16, or several comma-separated (one full run each, HF and the "
                         "engine in the same dtype); default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-static", action="store_true", help="skip HF generate with the static cache")
    ap.add_argument("--no-episode", action="store_true")
    ap.add_argument("--episode-G", type=int, default=4)
    ap.add_argument("--episode-turns", type=int, default=5)
    ap.add_argument("--episode-user", type=int, default=40)
    ap.add_argument("--episode-answer", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each decode measurement, HF and engine alternating; the best of each is kept")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="process: CPU time of this process (with --threads 1, robust on a CPU shared with other "
                         "jobs: time spent waiting for a core is not counted; memory stalls are)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_names = (args.dtype or ("bfloat16" if device.type == "cuda" else "float32")).split(",")
    for name in dtype_names:
        if name not in ("float32", "bfloat16", "float16"):
            sys.exit(f"--dtype: expected float32, bfloat16 or float16, got {name!r}")
    global CLOCK
    if args.clock == "process":
        if device.type != "cpu":
            sys.exit("--clock process: CPU only")
        CLOCK = time.process_time
    if args.quick and device.type == "cpu":
        args.batches, args.new_tokens, args.no_static, args.episode_turns = "8", 32, True, 2
    batches = [int(b) for b in args.batches.split(",")]

    runs = [run_dtype(args, device, getattr(torch, name), batches) for name in dtype_names]
    result = runs[0] if len(runs) == 1 else {"runs": runs}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


def run_dtype(args, device, dtype, batches):
    model = build_model(device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = read_bandwidth(device)
    floor_ms = 1e3 * weight_bytes / bw
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), dtype {dtype}, "
          f"threads {torch.get_num_threads()}, {args.clock} clock; weights {weight_bytes / 1e6:.0f} MB, read bandwidth "
          f"{bw / 1e9:.1f} GB/s -> floor {floor_ms:.2f} ms per decode step", flush=True)

    result = {"device": str(device), "dtype": str(dtype), "threads": torch.get_num_threads(), "clock": args.clock,
              "weight_bytes": weight_bytes, "read_bandwidth_Bps": bw, "floor_ms": floor_ms,
              "prompt": args.prompt, "new_tokens": args.new_tokens}
    t0 = time.perf_counter()
    rows = bench_decode(model, device, batches, args.prompt, args.new_tokens, max(batches), not args.no_static,
                        args.repeat)
    result["decode"] = rows
    print()
    hdr = (f"{'batch':>5} {'HF dyn tok/s':>12} {'HF static tok/s':>15} {'engine tok/s':>12} {'x HF dyn':>8} "
           f"{'x HF static':>11} | {'HF step ms':>10} {'engine step ms':>14} {'floor ms':>8} {'eng/floor':>9} "
           f"{'x HF decode':>11} {'greedy same':>11}")
    print(hdr)
    for r in rows:
        st = r.get("tok_s_hf_static")
        print(f"{r['batch']:>5} {r['tok_s_hf_dynamic']:>12.1f} {'-' if st is None else f'{st:.1f}':>15} "
              f"{r['tok_s_engine']:>12.1f} {r['speedup_vs_hf_dynamic']:>8.2f} "
              f"{'-' if st is None else format(r['speedup_vs_hf_static'], '.2f'):>11} | "
              f"{r['hf_decode_step_ms']:>10.1f} {r['engine_decode_step_ms']:>14.1f} {floor_ms:>8.1f} "
              f"{r['engine_decode_step_ms'] / floor_ms:>9.2f} {r['decode_speedup_vs_hf_dynamic']:>11.2f} "
              f"{'yes' if r['greedy_identical'] else 'no (%.3f)' % r['greedy_token_agreement']:>11}")
    if not args.no_episode:
        ep = bench_episode(model, device, args.episode_G, args.prompt, args.episode_turns, args.episode_user,
                           args.episode_answer, args.repeat)
        result["episode"] = ep
        print(f"\nmulti-turn episode (G={ep['G']}, prompt {ep['prompt']}, {ep['turns']} turns, user "
              f"{ep['user_tokens']} / answer {ep['answer_tokens']} tokens): HF generate {ep['hf_generate_s']:.2f} s, "
              f"engine fork+extend {ep['engine_s']:.2f} s -> {ep['speedup']:.2f}x")
    result["wall_s"] = time.perf_counter() - t0
    return result


if __name__ == "__main__":
    main()
