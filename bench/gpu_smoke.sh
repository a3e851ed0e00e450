#!/usr/bin/env bash
# GPU smoke test: every GPU figure docs/gpu.md quotes, in one invocation (<= 8 minutes on one H100).
#   bash bench/gpu_smoke.sh            # results: $OUT/summary.md, summary.json, gpu_smoke.log
#                                      # ($OUT defaults to bench/out/gpu_smoke)
# 1. No NVIDIA GPU -> exit 3 at once, with a message.
# 2. Install what is missing: echo-megatron's own dependencies from wheels in .whl/ when the machine has no
#    network (bench/gpu_wheels.sh fetches them), else from the package index. TransformerEngine is never
#    installed here: it comes with the image (NGC PyTorch containers) or `pip install 'echo-megatron[gpu]'`;
#    without it the FP8 stages are skipped with the reason and the bf16 runs use the local layer spec.
# 3. Tests: tests/test_gpu_selection.py twice, with the GPU hidden (the CPU logic CI runs) and visible (the GPU
#    tests: bf16 step, FP8 step then bf16 generation on TE layers).
# 4. bench/gpu_smoke.py all: paper_150m bf16/fp8 and paper_1b (seq 512) bf16/fp8 pretraining steps, GRPO in
#    FP8 on the testbed, rollout throughput; ends with the summary table.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-bench/out/gpu_smoke}
BUDGET=${GPU_SMOKE_BUDGET:-420}  # seconds for step 4 (steps 1-3 take about a minute)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_smoke.log"
: >"$LOG"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_smoke: no NVIDIA GPU on this machine (nvidia-smi lists none): nothing to measure; run it on a GPU node" >&2
  exit 3
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_smoke: nvidia-smi sees a GPU but $PY's torch does not (a CPU-only torch build?)" >&2
  exit 3
fi
nvidia-smi -L | tee -a "$LOG"

# -- 2. install -------------------------------------------------------------------------------------------------
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"megatron.core": "megatron-core", "omegaconf": "omegaconf", "math_verify": "math-verify",
        "tokenizers": "tokenizers", "datasets": "datasets", "psutil": "psutil", "tqdm": "tqdm", "yaml": "pyyaml",
        "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod.split(".")[0]) is None
               or (mod == "megatron.core" and importlib.util.find_spec(mod) is None)))
EOF
)
if [ -n "$missing" ]; then
  echo "installing: $missing" | tee -a "$LOG"
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/echo-site \
      .whl/*.whl >>"$LOG" 2>&1 || { echo "gpu_smoke: installing .whl/ failed (see $LOG)" >&2; exit 4; }
    export PYTHONPATH="$PYTHONPATH:/tmp/echo-site"
  else
    "$PY" -m pip install -q "megatron-core>=0.16.1,<0.17" "omegaconf>=2.4.0.dev0" math-verify tokenizers datasets \
      psutil tqdm pyyaml pytest >>"$LOG" 2>&1 || { echo "gpu_smoke: pip install failed (see $LOG); offline? run bench/gpu_wheels.sh and carry .whl/" >&2; exit 4; }
  fi
fi
"$PY" -c 'import megatron.core, omegaconf, echo_megatron' 2>>"$LOG" || {
  echo "gpu_smoke: echo_megatron does not import after the install (see $LOG)" >&2; exit 4; }

# -- 3. tests ---------------------------------------------------------------------------------------------------
t0=$(date +%s)
echo "== tests: CPU logic (GPU hidden)" | tee -a "$LOG"
CUDA_VISIBLE_DEVICES="" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_selection.py 2>&1 | tail -3 | tee -a "$LOG"
cpu_rc=${PIPESTATUS[0]}
echo "== tests: on the GPU" | tee -a "$LOG"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu_selection.py 2>&1 | tail -6 | tee -a "$LOG"
gpu_rc=${PIPESTATUS[0]}
echo "tests took $(( $(date +%s) - t0 ))s (exit: cpu $cpu_rc, gpu $gpu_rc)" | tee -a "$LOG"

# -- 4. figures -------------------------------------------------------------------------------------------------
PYTHONUNBUFFERED=1 "$PY" bench/gpu_smoke.py all --out "$OUT" --budget "$BUDGET" 2>&1 | tee -a "$LOG"
fig_rc=${PIPESTATUS[0]}
cp /tmp/echo-gpu-smoke/cli.log "$OUT/cli.log" 2>/dev/null  # the testbed/preprocess/pretrain commands' output
echo "tests/test_gpu_selection.py: exit $cpu_rc with the GPU hidden, $gpu_rc with it visible" | tee -a "$OUT/summary.md"
[ "$cpu_rc" -eq 0 ] && [ "$gpu_rc" -eq 0 ] && [ "$fig_rc" -eq 0 ]
