"""Bench: per-token log-probs from hidden states and the LM head, fused (smtpo) vs naive vs chunked torch vs Liger.

Time and peak extra memory (beyond the inputs) of forward and forward+backward (loss = -sum(logp)), every variant
measured in the same run, ratios against the naive path (matmul -> log_softmax -> gather with autograd).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what is allocated once the inputs exist. On CPU there
is no allocator counter, so each (variant, shape, dtype, mode) runs in a fresh subprocess and reports the process's
RSS high-water mark (VmHWM) minus its RSS after the inputs were built, measured over the first call.

    python bench/linear_logprob.py --device cpu                  # the CPU done-when shape (N=8192, H=576, V=49152)
    python bench/linear_logprob.py --device cuda --quick --out bench_linear_logprob.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

import torch

# This source tree when its native module is built in place (scripts/dev_build.sh), else the installed package
# (the GPU check pip-installs, with CUDA, and runs from elsewhere).
_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if glob.glob(os.path.join(_REPO, "smtpo_fast", "_C*.so")):
    sys.path.insert(0, _REPO)

SHAPES = {"smollm2-135m": (576, 49152), "qwen2.5-0.5b": (896, 151936), "h4096-v151936": (4096, 151936)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Variants: each returns a function that runs forward (and backward) once
# ----------------------------------------------------------------------------------------------------------------
def naive(h, w, y):
    logits = h @ w.T
    if logits.dtype != torch.float32:
        logits = logits.float()  # what HF / TRL do before log_softmax
    return torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)


def chunked_torch(h, w, y, chunk=1024):
    """The usual plain-torch fix: per token chunk, checkpointed (recomputed in backward)."""
    from torch.utils.checkpoint import checkpoint

    return torch.cat([
        checkpoint(naive, h[i:i + chunk], w, y[i:i + chunk], use_reentrant=False) for i in range(0, h.shape[0], chunk)
    ])


def smtpo(backend=None):
    from smtpo_fast.ops import linear_token_logprobs

    return lambda h, w, y: linear_token_logprobs(h, w, y, backend=backend)


def liger():
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    return lambda h, w, y: -loss(w, h, y)  # -sum(logp): the same loss as the others' -logp.sum()


def variants(device: str):
    out = {"naive": naive, "chunked-torch": chunked_torch}
    if device == "cpu":
        out["smtpo"] = smtpo()
    else:  # both CUDA paths: cuBLAS tiles + the CUDA softmax kernel, and the fused Triton forward (the default)
        from smtpo_fast import _ext

        if _ext.available("cuda", torch.device("cuda")):
            out["smtpo-cuda-chunked"] = smtpo("cuda")
        if _ext.available("triton", torch.device("cuda")):
            out["smtpo-triton-fused"] = smtpo("triton")
        if len(out) == 2:
            out["smtpo"] = smtpo()
        lg = liger()
        if lg is not None:
            out["liger-flce"] = lg
    return out


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------
def make_inputs(N, H, V, dtype, device, backward):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(N, H, generator=g)).to(device=device, dtype=dtype)
    w = (torch.randn(V, H, generator=g) * (2.0 / H ** 0.5)).to(device=device, dtype=dtype)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    if backward:
        h.requires_grad_()
        w.requires_grad_()
    return h, w, y


def step(fn, h, w, y, backward):
    if backward:
        out = fn(h, w, y)
        (-out.sum()).backward()
        h.grad = None
        w.grad = None
    else:
        with torch.no_grad():
            fn(h, w, y)


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_rss_peak():
    """Start VmHWM from the current RSS (Linux >= 4.0), so it measures this call only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # older kernels: the high-water mark then also covers input construction (an over-estimate)


def measure_cpu_worker(spec):
    """One (variant, shape, dtype, mode) in this fresh process: RSS high-water over the first call, then timings."""
    torch.set_num_threads(spec["threads"]) if spec.get("threads") else None
    fn = variants("cpu")[spec["variant"]]
    # Warm up on tiny inputs: library initialisation (oneDNN, autograd threads, lazy imports) is not the op's memory.
    step(fn, *make_inputs(64, 16, 512, DTYPES[spec["dtype"]], "cpu", spec["backward"]), spec["backward"])
    h, w, y = make_inputs(spec["N"], spec["H"], spec["V"], DTYPES[spec["dtype"]], "cpu", spec["backward"])
    _reset_rss_peak()
    base = _rss_kib("VmRSS:")
    t0 = time.perf_counter()
    step(fn, h, w, y, spec["backward"])
    first = time.perf_counter() - t0
    peak = _rss_kib("VmHWM:") - base
    times = [first]
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        step(fn, h, w, y, spec["backward"])
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times), "times_s": times, "peak_extra_mib": peak / 1024}


def measure_cpu_rounds(names, N, H, V, dt, backward, reps, rounds):
    """Every variant once per round, in turn, each in a fresh process: load from other jobs on a shared machine
    then falls on all variants alike. Time: the best round; memory: the largest high-water mark over rounds."""
    results = {name: None for name in names}
    for _ in range(rounds):
        for name in names:
            spec = dict(variant=name, N=N, H=H, V=V, dtype=dt, backward=backward, reps=reps)
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                results[name] = {"time_s": None, "peak_extra_mib": None, "error": proc.stderr.strip()[-300:]}
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            prev = results[name]
            if prev is None or prev.get("error"):
                results[name] = res
            else:
                prev["times_s"] += res["times_s"]
                prev["time_s"] = min(prev["time_s"], res["time_s"])
                prev["peak_extra_mib"] = max(prev["peak_extra_mib"], res["peak_extra_mib"])
    return results


def measure_cuda(fn, N, H, V, dtype, backward, reps):
    torch.cuda.empty_cache()
    h, w, y = make_inputs(N, H, V, dtype, "cuda", backward)
    torch.cuda.synchronize()
    try:
        step(fn, h, w, y, backward)  # warm-up: compiles Triton kernels, fills cuBLAS caches
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(fn, h, w, y, backward)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step(fn, h, w, y, backward)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError:
        del h, w, y
        torch.cuda.empty_cache()
        return {"time_s": None, "peak_extra_mib": None, "error": "OOM"}
    del h, w, y
    return {"time_s": sorted(times)[len(times) // 2], "times_s": times, "peak_extra_mib": peak / 2**20}


def configs(args):
    if args.device == "cpu" and not args.full:
        # The CPU done-when: N=8192, H=576, V=49152 float32; larger ones take minutes per naive run on 2 cores.
        return [(8192, "smollm2-135m", "fp32", mode) for mode in ("fwd", "fwd+bwd")]
    if args.quick:
        # The GPU done-when first (bf16, N=8192, H=4096, V=151936), then the rest at N=8192.
        out = [(8192, "h4096-v151936", "bf16", "fwd+bwd"), (8192, "h4096-v151936", "bf16", "fwd")]
        for shape in ("smollm2-135m", "qwen2.5-0.5b"):
            for dt in ("bf16", "fp32"):
                out += [(8192, shape, dt, "fwd+bwd"), (8192, shape, dt, "fwd")]
        out += [(8192, "h4096-v151936", "fp32", "fwd+bwd"), (2048, "qwen2.5-0.5b", "bf16", "fwd+bwd")]
        return out
    return [(N, shape, dt, mode) for N in (2048, 8192) for shape in SHAPES for dt in DTYPES
            for mode in ("fwd", "fwd+bwd")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="GPU: N=8192 shapes + one N=2048, fewer reps (<= 60 s H100)")
    ap.add_argument("--full", action="store_true", help="every N, shape, dtype (CPU: hours on 2 cores)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls after the first (CPU: per process)")
    ap.add_argument("--rounds", type=int, default=3, help="CPU: fresh processes per variant, interleaved")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new configs after this many seconds")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure_cpu_worker(json.loads(args.worker))))
        return

    reps = args.reps if args.reps is not None else (3 if args.quick else (0 if args.device == "cpu" else 10))
    budget = args.budget_s if args.budget_s is not None else (50.0 if args.quick else float("inf"))
    start = time.perf_counter()
    names = list(variants(args.device))
    rows, skipped = [], []
    for N, shape, dt, mode in configs(args):
        if time.perf_counter() - start > budget:
            skipped.append(f"{shape} N={N} {dt} {mode}")
            continue
        H, V = SHAPES[shape]
        backward = mode == "fwd+bwd"
        if args.device == "cpu":
            results = measure_cpu_rounds(names, N, H, V, dt, backward, reps, args.rounds)
        else:
            fns = variants("cuda")
            results = {name: measure_cuda(fns[name], N, H, V, DTYPES[dt], backward, reps) for name in names}
        group = [dict(device=args.device, shape=shape, N=N, H=H, V=V, dtype=dt, mode=mode, variant=name, **res)
                 for name, res in results.items()]
        ref = next((r for r in group if r["variant"] == "naive" and r["time_s"]), None)
        for r in group:
            ok = ref is not None and r["time_s"] is not None
            r["time_vs_naive"] = r["time_s"] / ref["time_s"] if ok else None
            r["mem_vs_naive"] = r["peak_extra_mib"] / ref["peak_extra_mib"] if ok and ref["peak_extra_mib"] else None
        rows += group
        print_rows(group, header=len(rows) == len(group))
    meta = dict(
        device=args.device,
        machine=torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        memory_method="torch.cuda.max_memory_allocated - allocated after inputs" if args.device == "cuda" else
        "fresh subprocess per row, warmed up on tiny inputs: VmHWM (reset via clear_refs) - VmRSS after "
        "inputs, over the first full-size call",
        time_method="median of reps after a warm-up" if args.device == "cuda" else
        f"best of {args.rounds} interleaved rounds (fresh process each, first full-size call + {reps} reps)",
        loss="-(logp).sum(); fwd rows run under torch.no_grad()",
        smtpo_backends=__import__("smtpo_fast").ops.backends(),
        skipped_for_time=skipped,
        wall_s=time.perf_counter() - start,
    )
    print(f"# memory: {meta['memory_method']}; time: {meta['time_method']}; {meta['machine']}")
    if skipped:
        print(f"# skipped (time budget): {skipped}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


def print_rows(rows, header):
    if header:
        print(f"{'shape':>14} {'N':>5} {'dtype':>5} {'mode':>7} {'variant':>19} {'time ms':>9} {'x naive':>8} "
              f"{'peak MiB':>9} {'x naive':>8}")
    for r in rows:
        t = "-" if r["time_s"] is None else f"{r['time_s'] * 1e3:.1f}"
        tr = "-" if r["time_vs_naive"] is None else f"{r['time_vs_naive']:.3f}"
        m = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}"
        mr = "-" if r["mem_vs_naive"] is None else f"{r['mem_vs_naive']:.3f}"
        err = f"  {r['error'][:80]}" if r.get("error") else ""
        print(f"{r['shape']:>14} {r['N']:>5} {r['dtype']:>5} {r['mode']:>7} {r['variant']:>19} {t:>9} {tr:>8} "
              f"{m:>9} {mr:>8}{err}", flush=True)


if __name__ == "__main__":
    main()
