#!/usr/bin/env bash
# The one prepared run for a machine with a GPU, within 9.5 minutes of one H200 in all:
#   1. attack_step   PGD image-steps/s, ViT-S/14 at 224 and a tiny ViT, fp32 and bf16, fraction
#                    of the bf16 peak
#   2. train_step    one training step vs the floor of its passes; does a DataLoader keep up
#   3. precision     torch.compile (bf16), and bf16 vs fp32 attack strength (AUROC)
#   4. method        ViT-S/14 at 224 on a generated category: PGD-10, clean and N-FGSM
#                    training for a time budget each, all judged by the adaptive suite
#   5. paths         the CUDA paths one GPU can show: Ray Train with one GPU worker (NCCL
#                    group, but one worker runs no collective), an NCCL all_reduce and
#                    gather_object at world size 1, evaluation actors sharing a GPU, bf16
#                    autocast in the attack and the step (no DDP between GPUs: that needs 2+)
#   6. gpu_utilisation  PGD image-steps/s and fraction of peak per batch size (8-256) and
#                    precision (bf16, tf32, fp32), ViT-S/14 at 224: OUT_DIR/gpu_utilisation.json,
#                    which `--plan` reads (copy it to benchmarks/gpu_utilisation.json, or pass
#                    --gpu-profile FILE) instead of its assumed utilisation table
# Tables go to OUT_DIR (*.txt, *.json, method.md, paths.json) and OUT_DIR/summary.md.
#
#   benchmarks/gpu_check.sh [OUT_DIR (default ./gpu_results)] [--peak-tflops N] [--smoke]
#
# --smoke runs the same stages on the CPU with tiny models (under 2 minutes): the test suite
# runs it, so the script is known to work before a GPU is ever lent. Each stage has a time
# limit; one that fails or runs out of time is recorded in stages.txt and the next still runs.
# PYTHON overrides the interpreter.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0

OUT=./gpu_results
PEAK=989
SMOKE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --peak-tflops) PEAK="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) OUT="$1"; shift ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/stages.txt"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"

if [[ $SMOKE == 1 ]]; then
  DEV=(--device cpu --quick)
  ATTACK=(--models tiny)
  TRAIN=()
  PRECISION=(--cpu-check --skip speed --train-epochs 2 --eps 8 --auroc-steps 2)
  METHOD=(--smoke)
  LIMITS=(60 90 90 60 120 60)
  echo "smoke run on the CPU (tiny models): checks the script, measures nothing" > "$OUT/device.txt"
else
  "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null \
    || { echo "gpu_check: torch sees no CUDA device (use --smoke on a CPU)" >&2; exit 2; }
  DEV=(--device cuda)
  ATTACK=(--batch-vits 256 --batch-tiny 256 --peak-tflops "$PEAK")
  TRAIN=(--workers 4 8)
  PRECISION=(--quick --compile-modes default --compile-precisions bf16 --eps 4 8 --train-epochs 10)
  METHOD=(--budget-s 90 45 45)
  LIMITS=(60 60 70 270 60 45)
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/device.txt" 2>&1
  echo "peak assumed: ${PEAK} TFLOP/s dense bf16 (pass --peak-tflops for another device)" \
    >> "$OUT/device.txt"
  # TF32 for what runs in fp32, switched on where pgray picks a CUDA device
  "$PYTHON" -c 'import torch; from pgray.core.device import pick_device; d = pick_device("cuda")
print(f"after pick_device({d}): torch.backends.cuda.matmul.allow_tf32 =",
      torch.backends.cuda.matmul.allow_tf32, "cudnn.allow_tf32 =", torch.backends.cudnn.allow_tf32)' \
    >> "$OUT/device.txt" 2>&1
fi

# stage NAME LIMIT_S SCRIPT ARGS...: run one benchmark, its output to NAME.txt, rows to NAME.json.
stage() {
  local name=$1 limit=$2 script=$3
  shift 3
  local start=$SECONDS status=ok
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$PYTHON" "benchmarks/$script" "${DEV[@]}" --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.txt" 2>&1
  local rc=$?
  if [[ $rc != 0 ]]; then status="FAILED or timed out (rc $rc)"; fi
  tail -n 3 "$OUT/$name.txt"
  echo "$name: $status in $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
}

stage attack_step "${LIMITS[0]}" attack_step.py "${ATTACK[@]}"
stage train_step "${LIMITS[1]}" train_step.py "${TRAIN[@]}"
stage precision "${LIMITS[2]}" precision.py "${PRECISION[@]}"
stage method "${LIMITS[3]}" gpu_method.py --out "$OUT" "${METHOD[@]}"
stage paths "${LIMITS[4]}" gpu_paths.py --out "$OUT"
stage gpu_utilisation "${LIMITS[5]}" gpu_utilisation.py

{
  echo "# GPU check ($SECONDS s in all)"
  echo; echo '```'; cat "$OUT/device.txt"; echo '```'
  echo; echo "## Stages"; echo; sed 's/^/- /' "$OUT/stages.txt"
  if [[ $SMOKE == 0 ]]; then
    echo; echo "## PGD throughput"; echo
    "$PYTHON" benchmarks/attack_step.py --summarize "$OUT" --peak-tflops "$PEAK" 2>&1
  fi
  if [[ -f "$OUT/gpu_utilisation.json" ]]; then
    echo; echo "## Utilisation per batch size (for --plan)"; echo
    echo '```'; grep -v '^==' "$OUT/gpu_utilisation.txt"; echo '```'
    echo; echo "--plan reads it from benchmarks/gpu_utilisation.json (copy it there) or --gpu-profile."
  fi
  if [[ -f "$OUT/method.md" ]]; then echo; sed 's/^# /## /' "$OUT/method.md"; fi
  if [[ -f "$OUT/paths.json" ]]; then
    echo; echo "## CUDA paths"; echo
    "$PYTHON" - "$OUT/paths.json" <<'PY'
import json
import sys

for name, path in json.load(open(sys.argv[1]))["paths"].items():
    state = "ok" if path["ok"] else "FAILED"
    print(f"- {name}: {state} ({path['seen']}, {path['s']:.0f} s)")
PY
  fi
} > "$OUT/summary.md"
cat "$OUT/summary.md"
grep -q "FAILED" "$OUT/stages.txt" && exit 1
exit 0
