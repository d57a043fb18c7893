"""What made a result row: pgray's evaluation version, and the commit of the code.

A row's number means "this detector, on this test split, under this threat and budget, scored
by this suite". The meaning rests on the code in `DEFINING_SOURCES`: the attacks and their
objectives, the suite's members and its worst case, the reliability checks, how a precision
is chosen, how scores become AUROCs, intervals and operating points, and the configs that say
what a suite is. The model and the data are not on the list: a row names its checkpoint by
digest and its test split by fingerprint, and the benchmark's job key holds both.

`HISTORY` records (version, digest of those sources), oldest first; the last entry is the
current one. tests/unit/test_eval_version.py recomputes the digest and fails when the sources
changed without a new entry. A change that alters what a row means (a stronger attack, another
metric convention, a new flag) adds `(EVAL_VERSION + 1, digest)`: every cached row of an older
version is then recomputed on the next benchmark run. A change that leaves every row as it was
(a comment, a rename) may add `(EVAL_VERSION, digest)` instead. Print the digest with
`python -m pgray.core.eval_version`.

Rows written before versions existed carry no `eval_version`: version 1.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
# Relative to the package; a pattern takes every file it matches (a new attack module too).
DEFINING_SOURCES = (
    "attacks/*.py",  # members, objectives, worst case, checks, precision, patch placement
    "core/scoring.py",  # how attacked scores become rows
    "core/row_columns.py",  # precision decisions, budgets per pixel, operating points, sides
    "core/metrics.py",  # AUROC, AUPRO, operating points
    "core/intervals.py",  # the bootstrap intervals in every row
    "core/robustness.py",  # what python -m pgray.evaluate runs, and in which order
    "core/smoothing.py",  # the smoothed detector and the noise expectation attacks step along
    "core/certification.py",  # certified bounds: order statistics, confidence, worst bounds
    "core/certify.py",  # the certified rows: what each side of the bracket is
    "config/attack.py",  # the suite's and the attacks' defaults and budgets
    "config/certify.py",  # certification's defaults: sigma, samples, confidence, EOT draws
)

HISTORY: tuple[tuple[int, str], ...] = (
    # 1: rows before the version existed (no eval_version column)
    # 2: attacks invariant to the detector's scale, masking checks and a black-box member per
    # threat, flagged_at_other_threat, bf16 per threat/eps/family scored in fp32, seeded
    # random subsets, the patch side nearest in area, operating points, suite columns
    (2, "3542eaf66d24dc540ad424a022588bf34127f919af55fe90c2f851a13096ddd2"),
    # the proxy's score margin added beside the AUROC (no row's meaning changed)
    (2, "0b0704eb8ff34fc0910df99814cafcc1608e38af77d2e4320eeb2ee8192129aa"),
    # issue 30: the PGD trajectory moved to attacks/trajectory.py (no row's meaning changed)
    (2, "d1e527e623146c3b3e55c23022febeea413ceddf9612003421faccdaf64ce87a"),
    # 3: issue 31: certified rows (percentile smoothing: certified, attacked-on-smoothed,
    # smoothed and base numbers per L2 radius), the suite judging by a scorer, l2 suites at
    # each certified radius
    (3, "2c16d0959895b4decded06dedfdf5e6d4a21f3dcab1ebfb8823e39b0554d7c14"),
    # the base sides of a certified row joinable after the fact (`with_base`), the work of a
    # certification counted (`certify_work`), the l2-at-each-radius rule shared with the
    # benchmark (`config.certify.suite_threats`), the noise's seed as `noise_seed` (the
    # `seed` column is the training seed's): version 3 had not been released
    (3, "5a325ca9b26e390f286d027717419e5064074d86f37eef3bc3107fe4b4b8667d"),
    # issue 32: test batches loaded by two workers into pinned memory on CUDA, copied without
    # blocking (no row's meaning changed)
    (3, "108367879df30e4c15682246dcd0dc08002a9faeea87569dd3abde62db58d592"),
)
EVAL_VERSION = HISTORY[-1][0]


def defining_files(package: Path = PACKAGE) -> list[Path]:
    """The files of `DEFINING_SOURCES`, in a fixed order."""
    files = {p for pattern in DEFINING_SOURCES for p in package.glob(pattern) if p.is_file()}
    return sorted(files, key=lambda p: p.relative_to(package).as_posix())


def source_digest(package: Path = PACKAGE) -> str:
    """sha256 over each defining file's path and text (line endings made \\n, so a checkout
    on Windows hashes the same)."""
    digest = hashlib.sha256()
    for path in defining_files(package):
        text = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


@functools.cache
def git_commit() -> str | None:
    """The commit of the pgray checkout this code runs from (asked of git once per process);
    None for an installed copy or without git. A checkout whose top folder does not hold this
    package (pgray installed inside another repository) has no commit of pgray's."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD", "--show-toplevel"], cwd=PACKAGE,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.split("\n")
    if proc.returncode != 0 or len(lines) < 2 or not re.fullmatch(r"[0-9a-f]{40}", lines[0]):
        return None
    return lines[0] if Path(lines[1]).resolve() == PACKAGE.parent else None


def main() -> int:
    digest = source_digest()
    print(digest)
    if digest != HISTORY[-1][1]:
        print(f"sources changed since version {EVAL_VERSION}: add ({EVAL_VERSION + 1},"
              f' "{digest}") to HISTORY in {Path(__file__).relative_to(PACKAGE.parent)}'
              f" (or ({EVAL_VERSION}, ...) if no row's meaning changed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
