"""SFT step throughput of the shared trainer's loss (fused LM-head log-probs, `linear_token_logprobs`) against the
usual HF loss (float32 logits -> `F.cross_entropy`), on the same randomly initialised Llama, measured in one run.

Shapes: `--model tiny` (the tiny preset: width 128, 4 layers, vocab 4096; CPU default) or `smollm2` (SmolLM2-135M's
shape: width 576, 30 layers, vocab 49152; CUDA default), built from config (no download). A step = forward,
response-token NLL, backward, AdamW step; bf16 autocast on CUDA. Response tokens are the last quarter of each row.

    PYTHONPATH=. python bench/sft.py --device cpu --out bench/out/sft_cpu.json
    python bench/sft.py --device cuda --quick --out bench/out/sft.json      # ~30 s on an H100
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3),
}


def hf_loss(model, ids, mask, labels, autocast):
    """What HF causal-LM training does: float32 logits, shift, cross-entropy summed over response tokens."""
    with autocast:
        logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def fused_loss(model, ids, mask, labels, autocast):
    from smtpo_fast.train.data import Batch
    from smtpo_fast.train.sft import sequence_loss

    nll, _ = sequence_loss(model, Batch(ids, mask, labels), autocast)
    return nll


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--model", default=None, choices=sorted(SHAPES), help="shape (default: tiny on cpu, smollm2 on cuda)")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default cpu 8, cuda 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default cpu 256, cuda 1024)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per variant (median; default cpu 5, cuda 20)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="GPU sizes with fewer repetitions (<= 60 s on an H100)")
    p.add_argument("--out", default="bench/out/sft.json", help="JSON output path ('' to skip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shape = args.model or ("smollm2" if cuda else "tiny")
    batch, seq = args.batch or 8, args.seq or (1024 if cuda else 256)
    reps = args.reps or (10 if args.quick else 20) if cuda else (args.reps or 5)

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(2048, seq), tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : seq * 3 // 4] = -100
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    rows = []
    for name, loss_fn in (("HF float32 logits + cross_entropy", hf_loss), ("fused LM-head log-probs (trainer)", fused_loss)):
        def step():
            loss = loss_fn(model, ids, mask, labels, autocast)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with benchlib.peak_extra_memory(device) as mem:
            seconds = benchlib.time_fn(step, device, reps=reps, warmup=2)
        # On CPU the allocator keeps the first variant's freed buffers for the second, so the resident-set peak
        # says nothing per variant here; memory is reported on CUDA only.
        rows.append({"variant": name, "ms": seconds * 1e3, "tok_s": batch * seq / seconds,
                     "peak_mib": mem["bytes"] / 2**20 if cuda and mem["bytes"] is not None else None})
    base = rows[0]
    for r in rows:
        r["speedup"] = base["ms"] / r["ms"]
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"] if r["peak_mib"] is not None and base["peak_mib"] else None
    from smtpo_fast import _ext

    fused_backend = _ext.select("linear_token_logprobs", device)
    print(f"SFT step, fused backend {fused_backend}, {shape} shape ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"{batch}x{seq} tokens, device {device}{' bf16 autocast' if cuda else ''}, {torch.get_num_threads()} threads")
    benchlib.print_table(rows, [("variant", "variant", ""), ("ms", "ms/step", "{:.1f}"), ("tok_s", "tokens/s", "{:,.0f}"),
                                ("speedup", "speedup vs HF", "{:.2f}x"), ("peak_mib", "peak extra MiB", "{:.0f}"),
                                ("memory_ratio", "memory vs HF", "{:.2f}")])
    benchlib.write_json(args.out, {"bench": "sft", "machine": benchlib.machine_info(device), "shape": shape,
                                   "fused_backend": fused_backend, "batch": batch, "seq": seq, "reps": reps, "rows": rows})


if __name__ == "__main__":
    main()
