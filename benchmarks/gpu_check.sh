#!/usr/bin/env bash
# Speed benchmarks 1-3 (attack step, precision/compile, training step) on one CUDA device,
# in under 8 minutes, with every table written into one folder.
#
#   benchmarks/gpu_check.sh [OUT_DIR (default ./gpu_results)] [--peak-tflops N (default 989)]
#
# The peak is the device's dense bf16 TFLOP/s (989: H100/H200 SXM); the achieved fraction is
# the measured image-steps/s x FLOPs per image-step (FlopCounterMode on one forward + input
# gradient) / peak. Each stage has its own time limit; a stage that fails or runs out of time
# is recorded in stages.txt and the next one still runs. PYTHON overrides the interpreter.
set -euo pipefail
export PYTHONUNBUFFERED=1

OUT=./gpu_results
PEAK=989
while [[ $# -gt 0 ]]; do
  case "$1" in
    --peak-tflops) PEAK="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) OUT="$1"; shift ;;
  esac
done

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/stages.txt"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null \
  || { echo "gpu_check: torch sees no CUDA device" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/device.txt" 2>&1 || true
echo "peak assumed: ${PEAK} TFLOP/s dense bf16 (pass --peak-tflops for another device)" \
  | tee -a "$OUT/device.txt"

# stage NAME LIMIT_S SCRIPT ARGS...: run one benchmark, table to NAME.txt, rows to NAME.json.
stage() {
  local name=$1 limit=$2 script=$3
  shift 3
  local start=$SECONDS status=ok
  echo "== $name (limit ${limit} s)"
  if ! timeout "$limit" "$PYTHON" "benchmarks/$script" --device cuda --json "$OUT/$name.json" \
      "$@" 2>&1 | tee "$OUT/$name.txt"; then
    status="FAILED or timed out (rc ${PIPESTATUS[0]})"
  fi
  echo "$name: $status in $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
}

stage attack_step 110 attack_step.py --batch-vits 256 --batch-tiny 256 --peak-tflops "$PEAK"
stage train_step 130 train_step.py --workers 4 8
stage precision 220 precision.py --compile-modes default --compile-precisions bf16 \
  --eps 2 8 --train-epochs 20

"$PYTHON" benchmarks/attack_step.py --summarize "$OUT" --peak-tflops "$PEAK" \
  | tee "$OUT/summary.txt" || echo "summary: failed" | tee -a "$OUT/stages.txt"
echo "tables in $OUT ($SECONDS s in all)"
