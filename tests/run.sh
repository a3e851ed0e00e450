#!/usr/bin/env bash
# Install echo-megatron with its test extras and run the whole test suite (the README's test command).
# CPU machines get the CPU torch wheel (torch==2.13.*); a machine that already has torch (an NGC
# container) keeps its own: set ECHO_KEEP_TORCH=1 there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${ECHO_KEEP_TORCH:-0}" = "1" ]; then
  "$PY" -m pip install -q -e ".[dev]"
else
  "$PY" -m pip install -q "torch==2.13.*" -e ".[dev]"
fi
# NeMo-Aligner 0.7.0 for the RL-math conformance tests: its helpers are pure torch, its deps are not needed.
"$PY" -m pip install -q --no-deps "nemo-aligner==0.7.0"
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
