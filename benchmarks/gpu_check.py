"""The prepared run for the lent GPU machine: stages in order of importance, each within its
time limit, every result packed into at most 8 files after every stage.

    python3 benchmarks/gpu_check.py OUT [--call 1|2|all] [--smoke] [--peak-tflops N]
    bash benchmarks/gpu_check.sh OUT ...        # the same
    bash benchmarks/gpu_check.sh --print-command  # the lent machine's one command line

The lent machine (benchmarks/README.md, "GPU check") gives one command at most 600 s and
brings back at most 8 files of $OUT. The first call's stages add up to two thirds of that
(STAGE_BUDGET_S); the third left covers installing the wheels, imports, the device lines and
packing. Stages write their rows as they go into a work folder outside OUT; after each stage
pack() rewrites OUT: summary.md, results.json (every stage's rows), logs.tar.gz (every stage's
output), mlflow.tar.gz (the MLflow store) and gpu_utilisation.json (for `--plan`): a call cut
short still brings home what had finished. A stage that would end past the call's deadline
is skipped and named for the second call (SECOND_CALL), which runs what did not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LENT_COMMAND = HERE / "gpu" / "lent_command.txt"

CALL_S = 600  # the lent machine's limit on one command
STAGE_BUDGET_S = CALL_S * 2 // 3  # a third left for start-up and packing
MAX_FILES = 8  # what comes back from $OUT
MAX_FILE_BYTES = 16 * 2**20
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    script: str
    limit_s: int  # on the GPU
    smoke_s: int  # on the CPU with tiny models (--smoke)
    args: tuple[str, ...] = ()
    smoke_args: tuple[str, ...] = ()
    call: int = 1
    what: str = ""


PEAK = "{peak}"  # filled in with --peak-tflops
STAGES = (
    Stage("attack_step", "attack_step.py", 40, 60,
          ("--batch-vits", "256", "--batch-tiny", "256", "--peak-tflops", PEAK),
          ("--models", "tiny"),
          what="PGD image-steps/s and fraction of peak, ViT-S/14 224 and a tiny ViT, fp32 (TF32"
               " on, as training runs) and bf16"),
    Stage("method", "gpu_method.py", 200, 150, ("--budget-s", "60", "25", "25"), ("--smoke",),
          what="ViT-S/14 224 trained with PGD-10, clean and N-FGSM for a time budget each,"
               " judged by the adaptive suite (short attacks, labelled)"),
    Stage("train_step", "train_step.py", 45, 90, ("--workers", "4", "8"),
          what="the training step against the floor of its passes; loader workers keeping up"),
    Stage("gpu_utilisation", "gpu_utilisation.py", 35, 60,
          what="PGD fraction of peak per batch size and precision: the --plan profile"),
    Stage("paths", "gpu_paths.py", 80, 300,
          what="Ray Train on one GPU worker, NCCL at world size 1, evaluation actors sharing"
               " the GPU, bf16 autocast"),
    Stage("precision", "precision.py", 180, 90,
          ("--quick", "--compile-modes", "default", "--compile-precisions", "bf16", "--eps",
           "4", "8", "--train-epochs", "10"),
          ("--cpu-check", "--skip", "speed", "--train-epochs", "2", "--eps", "8",
           "--auroc-steps", "2"),
          call=2,
          what="torch.compile (bf16) and bf16 vs fp32 attack strength (AUROC)"),
)
SECOND_CALL_S = 300  # what the 15 minutes leave after a start and the first call


def stages_of(call: str) -> list[Stage]:
    return [s for s in STAGES if call == "all" or s.call == int(call)]


def planned_seconds(stages: list[Stage], smoke: bool = False) -> int:
    return sum(s.smoke_s if smoke else s.limit_s for s in stages)


def command(stage: Stage, work: Path, out: Path, smoke: bool, peak: float) -> list[str]:
    python = os.environ.get("PYTHON") or sys.executable
    dev = ["--device", "cpu", "--quick"] if smoke else ["--device", "cuda"]
    args = stage.smoke_args if smoke else stage.args
    args = tuple(str(peak) if a == PEAK else a for a in args)
    extra = ("--out", str(work)) if stage.script in ("gpu_method.py", "gpu_paths.py") else ()
    return [python, str(HERE / stage.script), *dev, "--json", str(work / f"{stage.name}.json"),
            *extra, *args]


def run_stage(cmd: list[str], log: Path, limit_s: float, env: dict) -> tuple[str, int | None]:
    """Run one stage in its own process group; at its limit the whole group is ended (Ray's
    and the loaders' processes too)."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"timed out at {limit_s:.0f} s", None
    return ("ok" if rc == 0 else f"FAILED (rc {rc})"), rc


# -- packing -----------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[Path, str]], skip_over: int) -> list[str]:
    """A gzip tarball of `members`; files over `skip_over` bytes are left out and named."""
    left_out = []
    with tarfile.open(path, "w:gz") as tar:
        for src, arc in members:
            if src.is_file() and src.stat().st_size > skip_over:
                left_out.append(f"{arc} ({src.stat().st_size / 2**20:.1f} MiB)")
                continue
            if src.is_file():
                tar.add(src, arcname=arc)
    return left_out


def _write(out: Path, name: str, write) -> None:
    """Write OUT/name through a temporary beside it, then rename (a cut leaves the old one)."""
    tmp = out / f".{name}.tmp"
    write(tmp)
    os.replace(tmp, out / name)


def pack(work: Path, out: Path, record: dict) -> list[str]:
    """Rewrite OUT from the work folder: at most MAX_FILES files, each under MAX_FILE_BYTES.
    Returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for stage in record["stages"]:
        path = work / f"{stage['name']}.json"
        if path.is_file():
            try:
                rows[stage["name"]] = json.loads(path.read_text())
            except json.JSONDecodeError as err:  # a stage's file is written atomically
                rows[stage["name"]] = {"unreadable": str(err)}
    results = record | {"rows": rows}
    _write(out, "results.json", lambda p: p.write_text(json.dumps(results, indent=1)))
    logs = sorted(p for p in work.iterdir() if p.suffix in (".txt", ".md") and p.is_file())
    left = []
    _write(out, "logs.tar.gz", lambda p: left.extend(
        _tar(p, [(f, f.name) for f in logs], MAX_FILE_BYTES // 4)))
    store = work / "mlruns"
    if store.is_dir():
        files = sorted(f for f in store.rglob("*") if f.is_file())
        _write(out, "mlflow.tar.gz", lambda p: left.extend(
            _tar(p, [(f, str(f.relative_to(work))) for f in files], 2**20)))
    profile = work / "gpu_utilisation.json"
    if profile.is_file():
        _write(out, "gpu_utilisation.json", lambda p: p.write_bytes(profile.read_bytes()))
    _write(out, "summary.md", lambda p: p.write_text(summary(work, record, left)))
    names = sorted(p.name for p in out.iterdir())
    if len(names) > MAX_FILES:  # only where OUT held other files before (not $OUT there)
        print(f"gpu_check: {out} holds {len(names)} entries; the lent machine returns"
              f" {MAX_FILES}", file=sys.stderr)
    return names


def summary(work: Path, record: dict, left_out: list[str]) -> str:
    lines = [f"# GPU check, call {record['call']} ({record['elapsed_s']:.0f} s so far)", "",
             "```", record.get("device", ""), "```", "", "## Stages", ""]
    for s in record["stages"]:
        lines.append(f"- {s['name']}: {s['status']} in {s['s']:.0f} s (limit {s['limit_s']} s)")
    if record.get("skipped"):
        lines += ["", "## Not run in this call (for the second call)", ""]
        lines += [f"- {name}" for name in record["skipped"]]
    for name, title in (("attack_summary.txt", "PGD throughput"),
                        ("gpu_utilisation.txt", "Utilisation per batch size (for --plan)")):
        if (work / name).is_file():
            lines += ["", f"## {title}", "", "```", (work / name).read_text().strip(), "```"]
    if (work / "method.md").is_file():
        lines += ["", re.sub(r"^# ", "## ", (work / "method.md").read_text(), flags=re.M)]
    paths = work / "paths.json"
    if paths.is_file():
        lines += ["", "## CUDA paths", ""]
        for name, p in json.loads(paths.read_text())["paths"].items():
            state = "ok" if p["ok"] else "FAILED"
            lines.append(f"- {name}: {state} ({p['seen']}, {p['s']:.0f} s)")
    if left_out:
        lines += ["", "Left out of the tarballs (over the size kept): " + ", ".join(left_out)]
    return "\n".join(lines) + "\n"


# -- driver ------------------------------------------------------------------------------------


def device_lines(smoke: bool, python: str) -> str:
    if smoke:
        return "smoke run on the CPU (tiny models): checks the script, measures nothing"
    probe = ("import torch; from pgray.core.device import pick_device; d = pick_device('cuda');"
             "print(torch.cuda.get_device_name(d), 'torch', torch.__version__, 'CUDA',"
             " torch.version.cuda); print('after pick_device: TF32 matmul',"
             " torch.backends.cuda.matmul.allow_tf32, 'cudnn', torch.backends.cudnn.allow_tf32)")
    smi = ""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm",
                              "--format=csv"], capture_output=True, text=True).stdout
    torch_line = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    return (smi + torch_line.stdout + torch_line.stderr[-500:]).strip()


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("gpu_results"))
    p.add_argument("--call", choices=["1", "2", "all"], default=None,
                   help="which call's stages (default 1; all with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--work", type=Path, default=None,
                   help="where stages write (default: a new temporary folder; not returned)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip a stage that would end later than this after the start"
                        f" (default {STAGE_BUDGET_S} s on the GPU, none with --smoke)")
    p.add_argument("--print-command", action="store_true",
                   help="print the lent machine's one command line and exit")
    args = p.parse_args(argv)
    args.call = args.call or ("all" if args.smoke else "1")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.print_command:
        print(LENT_COMMAND.read_text().strip())
        return 0
    python = os.environ.get("PYTHON") or sys.executable
    if not args.smoke:
        probe = subprocess.run([python, "-c", "import torch; assert torch.cuda.is_available()"],
                               capture_output=True)
        if probe.returncode != 0:
            print("gpu_check: torch sees no CUDA device (use --smoke on a CPU)", file=sys.stderr)
            return 2
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    env = os.environ | {"PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
                        "MLFLOW_TRACKING_URI": f"file://{work / 'mlruns'}",
                        "MLFLOW_ALLOW_FILE_STORE": "true"}
    # Ray's own folder, unless one is set: a Ray that another program started on this machine
    # (`ray start`) would otherwise be joined by the paths stage instead of a private one
    env.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    deadline = args.deadline_s or (None if args.smoke else STAGE_BUDGET_S)
    record = {"call": args.call, "smoke": args.smoke, "stages": [], "skipped": [],
              "device": device_lines(args.smoke, python), "elapsed_s": 0.0}
    (work / "device.txt").write_text(record["device"] + "\n")
    for stage in stages_of(args.call):
        limit = stage.smoke_s if args.smoke else stage.limit_s
        spent = time.monotonic() - started
        if deadline is not None and spent + limit > deadline:
            record["skipped"].append(f"{stage.name} ({limit} s; {spent:.0f} s spent of"
                                     f" {deadline:.0f})")
            continue
        print(f"== {stage.name} (limit {limit} s)", flush=True)
        t0 = time.monotonic()
        status, _ = run_stage(command(stage, work, out, args.smoke, args.peak_tflops),
                              work / f"{stage.name}.txt", limit, env)
        record["stages"].append({"name": stage.name, "status": status, "limit_s": limit,
                                 "s": time.monotonic() - t0})
        if stage.name == "attack_step" and not args.smoke:
            attack_summary(work, python, args.peak_tflops)
        record["elapsed_s"] = time.monotonic() - started
        print(f"{stage.name}: {status} in {record['stages'][-1]['s']:.0f} s", flush=True)
        pack(work, out, record)
    record["elapsed_s"] = time.monotonic() - started
    names = pack(work, out, record)
    print((out / "summary.md").read_text())
    print(f"gpu_check: {len(names)} files in {out} ({', '.join(names)}); work folder {work}")
    return 0 if all(s["status"] == "ok" for s in record["stages"]) else 1


def attack_summary(work: Path, python: str, peak: float) -> None:
    """The ViT-S/14 throughput lines (attack_step.py --summarize) into the work folder."""
    done = subprocess.run([python, str(HERE / "attack_step.py"), "--summarize", str(work),
                           "--peak-tflops", str(peak)], capture_output=True, text=True, cwd=ROOT)
    (work / "attack_summary.txt").write_text(done.stdout + done.stderr[-2000:])


if __name__ == "__main__":
    sys.exit(main())
