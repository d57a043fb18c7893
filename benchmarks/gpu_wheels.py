"""Build the wheelhouse for the lent GPU machine: `make gpu-wheels` (python3 benchmarks/gpu_wheels.py).

The lent machine has Python 3.12 and its own PyTorch stack but no Ray, MLflow or torchattacks,
and no network: what the GPU check lacks travels as wheels inside the carried working tree,
64 MiB in all. This downloads benchmarks/gpu/wheels.txt for CPython 3.12 on manylinux x86_64
into .whl/ at the repository root (git-ignored; emptied first, so every run builds afresh),
slims the Ray wheel (its Java jars, JavaScript source maps, the web UI's fonts and RLlib:
none runs in the check; the file keeps its ray-*.whl name), and checks what would travel (the
working tree that `run` sends plus .whl/) against TARGET_MIB, printing the sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu" / "wheels.txt"
MIB = 2**20
LIMIT_MIB = 64  # the lent machine's carried working tree
TARGET_MIB = 56  # room left for results, logs and changes between the build and the call
# The lent machine's interpreter (KINDS.md: Python 3.12.3) and platform; pip matches each
# manylinux tag exactly, so every glibc level a wheel may name is listed.
PLATFORMS = ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(5, 40)), "any")
# Parts of the Ray wheel that the check never loads (path prefixes or suffixes in the wheel).
# The dashboard's web UI keeps its index and script (its server refuses to start without a
# build folder) but not its fonts and flame-graph viewer.
RAY_DROP_PREFIXES = ("ray/jars/", "ray/rllib/", "ray/dashboard/client/build/static/media/",
                     "ray/dashboard/client/build/speedscope-")
RAY_DROP_SUFFIXES = (".map",)


def pins(path: Path = WHEELS) -> list[str]:
    """The NAME==VERSION lines of a requirements file (comments and blanks skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def download_command(requirements: Path, dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           "--dest", str(dest), "--requirement", str(requirements)]
    for tag in PLATFORMS:
        cmd += ["--platform", tag]
    return cmd


def dropped(name: str) -> bool:
    return name.startswith(RAY_DROP_PREFIXES) or name.endswith(RAY_DROP_SUFFIXES)


def slim_wheel(path: Path, drop=dropped) -> tuple[int, int]:
    """Rewrite a wheel without the members `drop` names (RECORD follows), at the highest
    deflate level, under the same name. Returns (bytes before, bytes after)."""
    before = path.stat().st_size
    tmp = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(
            tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        kept = [i for i in src.infolist() if not drop(i.filename)]
        record = next(i for i in kept if i.filename.endswith(".dist-info/RECORD"))
        names = {i.filename for i in kept}
        for info in kept:
            if info is record:
                continue
            out.writestr(info, src.read(info), compresslevel=9)
        lines = [line for line in src.read(record).decode().splitlines()
                 if line and line.rsplit(",", 2)[0] in names]
        out.writestr(record, "\n".join(lines) + "\n", compresslevel=9)
    tmp.replace(path)
    return before, path.stat().st_size


def travelling_files(root: Path = ROOT) -> list[Path]:
    """What `run` sends without `carry`: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout.decode()
    return [root / name for name in out.split("\0") if name and (root / name).is_file()]


def tree_bytes(root: Path = ROOT) -> int:
    return sum(p.stat().st_size for p in travelling_files(root))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(dest: Path, requirements: Path = WHEELS) -> dict[str, int]:
    """Download afresh into `dest` and slim Ray; returns {wheel file: bytes}."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(download_command(requirements, dest), check=True)
    for ray_wheel in dest.glob("ray-*.whl"):
        before, after = slim_wheel(ray_wheel)
        print(f"{ray_wheel.name}: {before / MIB:.2f} MiB -> {after / MIB:.2f} MiB (without"
              f" {', '.join(RAY_DROP_PREFIXES + tuple('*' + s for s in RAY_DROP_SUFFIXES))})")
    wanted = {line.split("==")[0].lower().replace("-", "_") for line in pins(requirements)}
    got = {p.name.split("-")[0].lower() for p in dest.glob("*.whl")}
    if got != wanted:
        raise SystemExit(f"gpu-wheels: expected {sorted(wanted)}, got {sorted(got)}")
    return {p.name: p.stat().st_size for p in sorted(dest.glob("*.whl"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".whl")
    p.add_argument("--check-only", action="store_true",
                   help="measure an existing wheelhouse without downloading")
    args = p.parse_args(argv)
    sizes = ({q.name: q.stat().st_size for q in sorted(args.dest.glob("*.whl"))}
             if args.check_only else build(args.dest))
    wheels, tree = sum(sizes.values()), tree_bytes()
    total = wheels + tree
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {size / MIB:7.2f} MiB  {name}")
    print(f"wheelhouse: {len(sizes)} wheels, {wheels / MIB:.2f} MiB; working tree that travels:"
          f" {tree / MIB:.2f} MiB; carried in all: {total / MIB:.2f} MiB (target <= {TARGET_MIB}"
          f" MiB, the lent machine's limit {LIMIT_MIB} MiB)")
    if total > TARGET_MIB * MIB:
        print(f"gpu-wheels: {total / MIB:.2f} MiB is over the {TARGET_MIB} MiB target",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
