#!/usr/bin/env bash
# Download the wheels bench/gpu_smoke.sh installs on a GPU machine that has torch but no network (and no
# megatron-core): run here, then carry .whl/ to the GPU machine. A machine with network access or an image
# that already has these packages needs none of this.
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU image's python3
# megatron-core is pinned to the release CI tests (0.16.1; it has cp311/cp312 wheels). TransformerEngine is
# not fetched: its core library wheel alone is ~260 MiB and its PyTorch extension is source-only, so it comes
# with the image (NGC PyTorch containers ship it) or `pip install 'echo-megatron[gpu]'` on a networked node.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${plat[@]}" -d .whl "megatron-core==0.16.1"
# pure-python: config (omegaconf, whose 2.4 line vendors its antlr parser) and the math-answer checker
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" -d .whl \
  "omegaconf==2.4.1rc1" "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2"
# HF datasets (local JSONL/parquet readers of `eval`, `preprocess` hub sources) and the two of its needs the GPU
# image lacks (it has pyarrow, pandas, xxhash, fsspec, huggingface-hub); multiprocess is per-python.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" -d .whl \
  "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19"
ls -la .whl
