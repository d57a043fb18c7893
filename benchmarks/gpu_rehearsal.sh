#!/usr/bin/env bash
# `make gpu-rehearsal`: the lent GPU machine's limits rehearsed on this CPU, so that the first
# GPU call works on its first try (benchmarks/README.md, "GPU check").
#   1. A fresh Python 3.12 environment holding only packages of the lent machine's list
#      (benchmarks/gpu/lent_requirements.txt; torch 2.11.0 as a CUDA build that runs on the
#      CPU), checked against benchmarks/gpu/lent_packages.txt. Its wheels are downloaded once
#      into the cache folder, outside the repository.
#   2. The working tree that the device tool would send (tracked and untracked-not-ignored
#      files) and the wheelhouse .whl/ (`make gpu-wheels`), copied into a bare folder and
#      measured against 64 MiB.
#   3. In that copy, with nothing of this machine's environment but PATH to the fresh
#      Python: the lent machine's one command line (benchmarks/gpu/lent_command.txt) with
#      --smoke appended (900 s here: the smoke's CPU limits; 600 s there): the wheels installed into a
#      target folder, the versions printed, pgray run from source, every stage of the first
#      call. Then the second call's line likewise.
#   4. $OUT of each call: at most 8 plain files, 16 MiB each, names the tool brings back.
# GPU_REHEARSAL_CACHE (default /work/cache/gpu-rehearsal) and PY312 override the defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CACHE="${GPU_REHEARSAL_CACHE:-/work/cache/gpu-rehearsal}"
PY312="${PY312:-}"
if [[ -z "$PY312" ]]; then  # a pyenv shim answers to python3.12 without running it: try each
  for candidate in /root/.pyenv/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      PY312="$candidate"; break
    fi
  done
fi
[[ -n "$PY312" ]] || { echo "no Python 3.12 found (set PY312)" >&2; exit 2; }
REQ="$ROOT/benchmarks/gpu/lent_requirements.txt"
LINE="$(cat "$ROOT/benchmarks/gpu/lent_command.txt")"
MIB=$((1 << 20))
began=$SECONDS
step() { echo; echo "== $1 (at $((SECONDS - began)) s)"; }

case "$CACHE" in "$ROOT"|"$ROOT"/*) echo "the cache must lie outside the repository" >&2; exit 2 ;; esac
mkdir -p "$CACHE"
[[ -d .whl ]] || { echo "no .whl/: run make gpu-wheels first" >&2; exit 2; }

step "1. the lent machine's packages, in a fresh Python 3.12 environment"
"$PY312" --version
stamp="$CACHE/lent-wheels/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
  for n in $(seq 5 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  "$PY312" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform any -d "$CACHE/lent-wheels" -r "$REQ"
  echo "$want" > "$stamp"
else
  echo "lent wheels cached in $CACHE/lent-wheels ($(du -sh "$CACHE/lent-wheels" | cut -f1))"
fi
rm -rf "$CACHE/venv"
"$PY312" -m venv "$CACHE/venv"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  "$CACHE/venv/bin/python" -m pip install -q --no-index --find-links "$CACHE/lent-wheels" -r "$REQ"
not_lent() {  # installed distributions that the lent machine's list does not name
  "$CACHE/venv/bin/python" - "$ROOT/benchmarks/gpu/lent_packages.txt" <<'PY'
import re
import sys
from importlib.metadata import distributions

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

lent = {norm(line) for line in open(sys.argv[1]).read().split("\n")
        if line.strip() and not line.startswith("#")}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in distributions()} - lent - {"pip"})))
PY
}
# A dependency the lent machine goes without (tzdata, which pandas asks for and reads only
# where the system has no time zone files) is removed again, as it is absent there.
extra="$(not_lent)"
if [[ -n "$extra" ]]; then
  echo "not on the lent machine's list, removed: $extra"
  "$CACHE/venv/bin/python" -m pip uninstall -q -y $extra
fi
[[ -z "$(not_lent)" ]] || { echo "still not on the list: $(not_lent)" >&2; exit 1; }
echo "environment: $("$CACHE/venv/bin/python" -m pip list --format=freeze | wc -l) packages, all on the lent machine's list"

step "2. what travels: the working tree the tool sends, and .whl/"
python3 benchmarks/gpu_wheels.py --check-only
tree="$CACHE/tree"
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$tree"  # links travel as links
cp -r .whl "$tree/.whl"
carried=$(find "$tree" \( -type f -o -type l \) -printf '%s\n' | awk '{s += $1} END {print s}')
echo "copied: $(find "$tree" -type f | wc -l) files, $((carried / 1024)) KiB ($(awk -v b="$carried" 'BEGIN {printf "%.2f", b / 1048576}') MiB)"
(( carried <= 64 * MIB )) || { echo "over the 64 MiB the tool carries" >&2; exit 1; }

run_call() {  # CALL LIMIT_S: the lent command line in the bare copy, then what $OUT holds
  local call=$1 limit=$2 out="$CACHE/out$1" raytmp
  rm -rf "$out" /tmp/pgray-site && mkdir -p "$out"
  raytmp="$(mktemp -d /tmp/rayrh.XXXX)"  # short: Ray's socket paths; apart from other Rays
  step "3.$call the lent command line, call $call, --smoke, within ${limit} s"
  echo "$LINE --smoke --call $call"
  local t0=$SECONDS rc=0
  (cd "$tree" && env -i HOME="$HOME" LANG=C.UTF-8 PATH="$CACHE/venv/bin:/usr/bin:/bin" \
     PIP_CONFIG_FILE=/dev/null OUT="$out" RAY_TMPDIR="$raytmp" \
     timeout "$limit" bash -c "$LINE --smoke --call $call") > "$CACHE/call$call.log" 2>&1 || rc=$?
  grep -E "^(torch |== |[a-z_]+: (ok|FAILED|timed)|gpu_check:)" "$CACHE/call$call.log" || true
  echo "call $call: rc $rc in $((SECONDS - t0)) s (limit $limit s)"
  rm -rf "$raytmp"
  step "4.$call what comes back from call $call"
  local files bad
  files=$(find "$out" -mindepth 1 | wc -l)
  bad=$(find "$out" -mindepth 1 \( -type d -o -size +16M \) | wc -l)
  ls -la "$out"
  echo "returned: $files files (at most 8), $(du -sb "$out" | cut -f1) bytes"
  if (( rc != 0 || files > 8 || bad > 0 )); then
    tail -n 40 "$CACHE/call$call.log"
    echo "call $call failed the rehearsal" >&2
    exit 1
  fi
  find "$out" -mindepth 1 -printf '%f\n' | grep -qvE '^[A-Za-z0-9._-]+$' \
    && { echo "a returned name the tool would not bring back" >&2; exit 1; }
  return 0
}
run_call 1 "${REHEARSAL_CALL1_S:-900}"  # the smoke's CPU stage limits add to 660 s (400 s on the GPU)
run_call 2 300
step "done"
echo "rehearsal passed in $((SECONDS - began)) s; logs and results in $CACHE"
