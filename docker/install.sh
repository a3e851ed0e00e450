#!/usr/bin/env bash
# Install echo-megatron (and the megatron-core it is tested with) into the current Python environment,
# keeping that environment's torch: the NGC base image's build (CUDA, NCCL, TransformerEngine, apex) must not
# be replaced by a wheel from PyPI. Run by docker/Dockerfile and docker/echo-megatron.def; the test suite runs
# it in a fresh venv that sees this machine's torch (tests/test_cluster_docker.py).
#   bash docker/install.sh [SOURCE_DIR]        (default: the repository this script is in)
# Environment: PYTHON (default python3), MCORE_VERSION (default 0.16.1).
set -euo pipefail

src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON:-python3}
mcore=${MCORE_VERSION:-0.16.1}

torch_before=$("$py" -c 'import torch; print(torch.__version__)') || {
  echo "install.sh: $py has no torch; start from an image (or venv) that brings it" >&2
  exit 1
}
"$py" -m pip install --no-cache-dir "megatron-core==${mcore}" "$src"
torch_after=$("$py" -c 'import torch; print(torch.__version__)')
if [ "$torch_before" != "$torch_after" ]; then
  echo "install.sh: pip replaced torch ${torch_before} with ${torch_after}; pin it in the base image" >&2
  exit 1
fi
"$py" - <<PY
import importlib.metadata as md
import echo_megatron, megatron.core  # noqa: F401
assert md.version("megatron-core") == "${mcore}", md.version("megatron-core")
print("echo-megatron", md.version("echo-megatron"), "| megatron-core", md.version("megatron-core"), "| torch ${torch_after}")
PY
"$py" -m echo_megatron --help >/dev/null
