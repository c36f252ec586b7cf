#!/usr/bin/env bash
# One GPU check, for a lent machine with no network (torch with CUDA, triton, pybind11, scikit-build-core, cmake,
# ninja preinstalled): build with CUDA, run the CUDA and Triton tests, run the benches at GPU sizes, and write
# everything under an output folder. Whole script: at most about 9 minutes (each step has its own timeout).
#
#   bash bench/gpu_check.sh "$OUT"        # OUT defaults to bench/out/gpu
#
# Liger's kernels (the baseline of bench/linear_logprob.py and bench/logprob.py) are not in the GPU image; fetch the
# wheel here and carry `.whl` with the call:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl liger-kernel==0.8.5
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$repo/bench/out/gpu}}
mkdir -p "$out/logs"
cd "$repo"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine" | tee "$out/summary.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$out/summary.txt"

step "build (SMTPO_CUDA=ON, sm_90)" | tee -a "$out/summary.txt"
start=$(date +%s)
SMTPO_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 90 python3 -m pip install -q --no-build-isolation --no-deps \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 . > "$out/logs/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
[ $rc -eq 0 ] || { tail -40 "$out/logs/build.log"; exit 1; }
# Optional baselines that the GPU image lacks travel as wheels in .whl/ (see bench/RESULTS.md: Liger).
if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$repo"/.whl/*.whl > "$out/logs/wheels.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "extra wheels: $(cd "$repo/.whl" && ls *.whl | tr '\n' ' ')" | tee -a "$out/summary.txt"
fi
# From a folder outside the source tree, so the installed package (with its CUDA module) is the one imported.
cd /tmp
python3 -c "import smtpo_fast, json; print(json.dumps(smtpo_fast.ops.backends()))" 2>&1 | tee -a "$out/summary.txt"

step "CUDA and Triton tests" | tee -a "$out/summary.txt"
per_test=""
python3 -c "import pytest_timeout" 2>/dev/null && per_test="--timeout 60"
timeout 170 python3 -m pytest "$repo/tests" -v -p no:cacheprovider $per_test -k "cuda or triton or gpu" \
  > "$out/tests.log" 2>&1
echo "tests rc=$? : $(grep -cE ' PASSED' "$out/tests.log") passed, $(grep -cE ' (FAILED|ERROR)' "$out/tests.log") failed/error; $(tail -1 "$out/tests.log")" | tee -a "$out/summary.txt"
grep -E " (FAILED|ERROR)" "$out/tests.log" | head -30 | tee -a "$out/summary.txt"

step "benches" | tee -a "$out/summary.txt"
# The TRL-style per-row loop is only timed at the smaller size (at 8192 x 151936 it takes ~1 s a call).
timeout 70 python3 "$repo/bench/logprob.py" --device cuda --quick --loop-limit 3e8 --reps 10 \
  --out "$out/logprob.json" > "$out/logs/bench_logprob.log" 2>&1
echo "bench logprob rc=$?" | tee -a "$out/summary.txt"
sed -n '/^ *dtype/,$p' "$out/logs/bench_logprob.log" | tee -a "$out/summary.txt"

timeout 60 python3 "$repo/bench/advantages.py" --device cuda --quick --out "$out/advantages.json" > "$out/logs/bench_advantages.log" 2>&1
echo "bench advantages rc=$?" | tee -a "$out/summary.txt"
sed -n '/^op /,$p' "$out/logs/bench_advantages.log" | tee -a "$out/summary.txt"

timeout 80 python3 "$repo/bench/rollout.py" --device cuda --quick --no-static --out "$out/rollout.json" > "$out/logs/bench_rollout.log" 2>&1
echo "bench rollout rc=$?" | tee -a "$out/summary.txt"
tail -25 "$out/logs/bench_rollout.log" | tee -a "$out/summary.txt"

timeout 70 python3 "$repo/bench/linear_logprob.py" --device cuda --quick --out "$out/linear_logprob.json" > "$out/logs/bench_linear_logprob.log" 2>&1
echo "bench linear_logprob rc=$?" | tee -a "$out/summary.txt"
sed -n '/^ *shape/,$p' "$out/logs/bench_linear_logprob.log" | tee -a "$out/summary.txt"

# The tool that fetches $out brings back at most 8 files: keep the summary, the test log and the JSONs loose,
# and pack the logs.
tar czf "$out/logs.tgz" -C "$out" logs && rm -rf "$out/logs"
step "done" | tee -a "$out/summary.txt"
