#!/usr/bin/env bash
# The one prepared run for the lent GPU machine: benchmarks/gpu_check.py does the work (its
# docstring and benchmarks/README.md, "GPU check", say what it runs and returns).
#
#   benchmarks/gpu_check.sh [OUT_DIR (default ./gpu_results)] [--call 1|2|all] [--smoke]
#                           [--peak-tflops N] [--print-command]
#
# --smoke runs the stages on the CPU with tiny models (the test suite and `make gpu-rehearsal`
# run it). --print-command prints the lent machine's one command line. PYTHON overrides the
# interpreter (default: the repository's .venv where there is one, else python3).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
case "${1:-}" in -h|--help) sed -n '2,10p' "$0"; exit 0 ;; esac
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
