#!/usr/bin/env python
"""Bench: fused token log-probs (smtpo_fast.ops.token_logprobs) against the ways RLHF code computes them.

One run measures, on the same inputs: torch eager (log_softmax(logits.float()).gather), a per-row loop like TRL's
selective_log_softmax, every smtpo backend usable here (plus the in-place-backward variant), and Liger's /
flash-attn's Triton cross-entropy when installed (CUDA). For each: forward and forward+backward time, speed-up over
torch eager, achieved bandwidth (bytes of logits read, + gradient written) and its fraction of this machine's
copy bandwidth measured in the same run, peak extra memory of a cold call ("extra MB") and what the CPU
gradient-buffer cache keeps resident for the next step afterwards ("held MB"; smtpo_cpu_nocache is the same op with
that cache off). Prints a table and writes JSON.

    python bench/logprob.py                      # this machine's default sizes
    python bench/logprob.py --sizes 4096x49152 --dtypes float32,bfloat16 --out bench/out/logprob.json
    python bench/logprob.py --device cuda --quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_eager(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def trl_row_loop(logits, labels):
    """TRL's selective_log_softmax: logsumexp per row for float32, a log_softmax per row for half precision."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return selected - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return torch.stack([torch.log_softmax(r, -1).gather(-1, l.unsqueeze(-1)).squeeze(-1) for r, l in zip(logits, labels)])


def third_party(device):
    """Liger / flash-attn cross-entropy as log-prob providers (-loss per token), when importable."""
    out = {}
    if device.type != "cuda":
        return out
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

        def liger(logits, labels):
            # reduction="none" gives the per-token loss = -log p(label)
            return -LigerCrossEntropyFunction.apply(logits, labels, None, -100, 0.0, 0.0, "none")[0]

        out["liger"] = liger
    except Exception:
        pass
    try:
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss

        def flash_attn_ce(logits, labels):
            return -cross_entropy_loss(logits, labels, inplace_backward=False)[0]

        out["flash_attn"] = flash_attn_ce
    except Exception:
        pass
    return out


@contextlib.contextmanager
def grad_cache_off(off: bool):
    old = os.environ.get("SMTPO_GRAD_CACHE")
    if off:
        os.environ["SMTPO_GRAD_CACHE"] = "0"
    try:
        yield
    finally:
        if off:
            if old is None:
                os.environ.pop("SMTPO_GRAD_CACHE", None)
            else:
                os.environ["SMTPO_GRAD_CACHE"] = old


def variants(device):
    from smtpo_fast import _ext
    from smtpo_fast.ops import token_logprobs

    v = {"torch_eager": torch_eager, "trl_row_loop": trl_row_loop}
    for name in ("cpu", "cuda", "triton"):
        if _ext.available(name, device):
            v[f"smtpo_{name}"] = (lambda b: lambda x, y: token_logprobs(x, y, backend=b))(name)
            v[f"smtpo_{name}_inplace"] = (lambda b: lambda x, y: token_logprobs(x, y, backend=b, inplace_backward=True))(name)
    if "smtpo_cpu" in v:
        # The default backward with the gradient-buffer cache off (run() sets SMTPO_GRAD_CACHE=0 around it): a fresh
        # gradient tensor every step, as before the cache.
        v["smtpo_cpu_nocache"] = v["smtpo_cpu"]
    v.update(third_party(device))
    return v


def run(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    copy_bw = benchlib.copy_bandwidth(device)
    from smtpo_fast.ops import empty_grad_cache, grad_cache_info
    print(f"device {device} ({benchlib.machine_info(device).get('gpu') or benchlib._cpu_name()}), "
          f"threads {torch.get_num_threads()}, copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write)")
    rows = []
    vs = variants(device)
    for size in args.sizes:
        N, V = size
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            logits = torch.empty(N, V, dtype=dtype, device=device).normal_(0, 2)
            labels = torch.randint(0, V, (N,), device=device)
            nbytes = logits.numel() * logits.element_size()
            base = {}
            for mode in args.modes:
                for vname, fn in vs.items():
                    if (vname.endswith("_inplace") or vname.endswith("_nocache")) and mode == "fwd":
                        continue
                    if vname == "trl_row_loop" and N * V > args.loop_limit:
                        continue
                    if mode == "fwd":
                        def call(fn=fn):
                            with torch.no_grad():
                                fn(logits, labels)
                        setup = None
                        moved = nbytes
                    else:
                        holder = {}

                        def setup(holder=holder):
                            holder["x"] = logits.detach().clone().requires_grad_()

                        def call(fn=fn, holder=holder):
                            # autograd.grad, not .backward(): a leaf's AccumulateGrad would copy a gradient that
                            # aliases the logits (in-place variants), which real logits (a matmul output) never see.
                            torch.autograd.grad(fn(holder["x"], labels).sum(), holder["x"])
                        moved = 3 * nbytes  # read for forward, read again + write the gradient in backward
                    try:
                        with grad_cache_off(vname.endswith("_nocache")):
                            # Timed in a loop like a training step's: from the second call on, the CPU backward
                            # recycles the gradient buffer the previous step freed (smtpo_fast/ops/_grad_cache.py).
                            t = benchlib.time_fn(call, device, reps=args.reps, warmup=1, setup=setup)
                            if setup:
                                setup()
                            # Extra memory of a cold call: the cache is emptied first, so a recycled gradient
                            # buffer counts as the new memory it is on a first step.
                            empty_grad_cache()
                            with benchlib.peak_extra_memory(device) as mem:
                                call()
                            if setup:
                                holder.clear()
                            gc.collect()
                            held = grad_cache_info()["idle_bytes"]  # what stays resident for the next step
                            empty_grad_cache()
                    except (RuntimeError, torch.OutOfMemoryError) as exc:
                        print(f"  {vname} {mode} N={N} V={V} {dname}: failed ({str(exc).splitlines()[0][:80]})")
                        continue
                    if vname == "torch_eager":
                        base[mode] = t
                    row = dict(N=N, V=V, dtype=dname, mode=mode, variant=vname, ms=t * 1e3,
                               speedup=(base[mode] / t) if mode in base else None,
                               gbps=moved / t / 1e9, frac_copy=moved / t / copy_bw,
                               extra_mb=(mem["bytes"] / 2**20) if mem["bytes"] is not None else None,
                               held_mb=held / 2**20,
                               mem_method=mem["method"])
                    rows.append(row)
                    print(f"  {dname:9s} N={N:5d} V={V:6d} {mode:7s} {vname:22s} {t * 1e3:9.2f} ms"
                          f"  x{row['speedup'] or float('nan'):6.2f}  {row['gbps']:7.1f} GB/s"
                          f"  extra {row['extra_mb'] if row['extra_mb'] is not None else float('nan'):8.1f} MB"
                          f"  held {held / 2**20:7.1f} MB",
                          flush=True)
            del logits, labels
    print()
    benchlib.print_table(rows, [
        ("dtype", "dtype", ""), ("N", "N", ""), ("V", "V", ""), ("mode", "mode", ""), ("variant", "variant", ""),
        ("ms", "ms", "{:.2f}"), ("speedup", "vs eager", "{:.2f}x"), ("gbps", "GB/s", "{:.1f}"),
        ("frac_copy", "of copy BW", "{:.0%}"), ("extra_mb", "extra MB", "{:.1f}"), ("held_mb", "held MB", "{:.1f}"),
    ])
    benchlib.write_json(args.out, {"bench": "logprob", "machine": benchlib.machine_info(device),
                                   "copy_bandwidth_gbps": copy_bw / 1e9, "rows": rows, "args": vars(args)})
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--sizes", default=None,
                   help="comma-separated NxV (default: cpu 1024x32000,4096x49152; cuda the full grid "
                        "N in 1024,4096,8192 x V in 32000,49152,151936)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16,float16")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per point (median; default cpu 3, cuda 20)")
    p.add_argument("--loop-limit", type=float, default=4e9, help="skip the per-row loop baseline above N*V")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="the GPU headline sizes only (8192x151936, 4096x49152)")
    p.add_argument("--out", default="bench/out/logprob.json", help="JSON output path ('' to skip)")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    if a.sizes is None:
        if a.quick:
            a.sizes = "8192x151936,4096x49152"
        else:
            a.sizes = ("1024x32000,4096x32000,8192x32000,1024x49152,4096x49152,8192x49152,1024x151936,"
                       "4096x151936,8192x151936") if cuda else "1024x32000,4096x49152"
    a.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",")]
    a.dtypes = a.dtypes.split(",")
    a.modes = a.modes.split(",")
    a.reps = a.reps or (20 if cuda else 3)
    return a


if __name__ == "__main__":
    run(parse_args())
