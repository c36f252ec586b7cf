#!/usr/bin/env bash
# Build smtpo_fast/_C in place for working from the source tree (PYTHONPATH=. pytest ...), without installing.
# SMTPO_CUDA=AUTO|ON|OFF as for pip install (default here OFF: the CUDA compile is slow and nothing runs it here).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DSMTPO_CUDA="${SMTPO_CUDA:-OFF}" \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build" -j"${JOBS:-2}"
cp "$build"/_C*.so smtpo_fast/
echo "built $(ls smtpo_fast/_C*.so)"
