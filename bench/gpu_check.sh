#!/usr/bin/env bash
# One GPU check, for a lent machine with no network (torch with CUDA, triton, pybind11, scikit-build-core, cmake,
# ninja preinstalled): build with CUDA, run the CUDA and Triton tests, run the benches at GPU sizes, and write
# everything under an output folder. Whole script: about 5-7 minutes on an H100/H200.
#
#   bash bench/gpu_check.sh "$OUT"        # OUT defaults to bench/out/gpu
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$repo/bench/out/gpu}}
mkdir -p "$out"
cd "$repo"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine" | tee "$out/summary.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$out/summary.txt"

step "build (SMTPO_CUDA=ON, sm_90)" | tee -a "$out/summary.txt"
start=$(date +%s)
SMTPO_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 300 python3 -m pip install -q --no-build-isolation --no-deps \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 . > "$out/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
[ $rc -eq 0 ] || { tail -40 "$out/build.log"; exit 1; }
# From a folder outside the source tree, so the installed package (with its CUDA module) is the one imported.
cd /tmp
python3 -c "import smtpo_fast, json; print(json.dumps(smtpo_fast.ops.backends()))" 2>&1 | tee -a "$out/summary.txt"

step "CUDA and Triton tests" | tee -a "$out/summary.txt"
timeout 240 python3 -m pytest "$repo/tests" -q --maxfail=25 -p no:cacheprovider -k "cuda or triton or gpu" \
  > "$out/tests.log" 2>&1
echo "tests rc=$? : $(tail -1 "$out/tests.log")" | tee -a "$out/summary.txt"
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -20 | tee -a "$out/summary.txt"

step "benches" | tee -a "$out/summary.txt"
timeout 150 python3 "$repo/bench/logprob.py" --device cuda --quick --out "$out/logprob.json" > "$out/bench_logprob.log" 2>&1
echo "bench logprob rc=$?" | tee -a "$out/summary.txt"
sed -n '/^ *dtype/,$p' "$out/bench_logprob.log" | tee -a "$out/summary.txt"
timeout 90 python3 "$repo/bench/advantages.py" --device cuda --quick --out "$out/advantages.json" > "$out/bench_advantages.log" 2>&1
echo "bench advantages rc=$?" | tee -a "$out/summary.txt"
sed -n '/^op /,$p' "$out/bench_advantages.log" | tee -a "$out/summary.txt"
timeout 120 python3 "$repo/bench/linear_logprob.py" --device cuda --quick --out "$out/linear_logprob.json" > "$out/bench_linear_logprob.log" 2>&1
echo "bench linear_logprob rc=$?" | tee -a "$out/summary.txt"
sed -n '/^ *shape/,$p' "$out/bench_linear_logprob.log" | tee -a "$out/summary.txt"
