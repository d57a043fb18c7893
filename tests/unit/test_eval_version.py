"""The evaluation version: a change to the code that defines what a row means cannot land
without a new entry in pgray.core.eval_version.HISTORY."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pgray.core import eval_version
from pgray.core.eval_version import EVAL_VERSION, HISTORY, defining_files, source_digest

PACKAGE = Path(eval_version.__file__).resolve().parents[1]


def test_the_recorded_digest_is_that_of_the_sources():
    digest = source_digest()
    version, recorded = HISTORY[-1]
    assert digest == recorded, (
        f"the sources that define a row's meaning changed ({', '.join(eval_version.DEFINING_SOURCES)})"
        f" but pgray/core/eval_version.py still records {recorded[:12]}... for version"
        f" {version}. If rows now mean something else, add ({version + 1}, \"{digest}\") to"
        f" HISTORY; if no row's meaning changed, add ({version}, \"{digest}\")."
        " Print the digest with: python -m pgray.core.eval_version")


def test_the_history_only_moves_forward():
    versions = [v for v, _ in HISTORY]
    digests = [d for _, d in HISTORY]
    assert versions == sorted(versions) and versions[0] >= 2 and EVAL_VERSION == versions[-1]
    assert len(set(digests)) == len(digests)
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)


def test_the_digest_follows_the_sources_but_not_their_line_endings(tmp_path):
    copy = tmp_path / "pgray"
    for path in defining_files():
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    names = {p.relative_to(PACKAGE).as_posix() for p in defining_files()}
    assert {"attacks/suite.py", "core/scoring.py", "core/metrics.py",
            "config/attack.py"} <= names
    assert source_digest(copy) == source_digest()
    scoring = copy / "core" / "scoring.py"
    scoring.write_bytes(scoring.read_bytes().replace(b"\n", b"\r\n"))
    assert source_digest(copy) == source_digest()  # a Windows checkout
    scoring.write_text(scoring.read_text() + "# a change\n")
    changed = source_digest(copy)
    assert changed != source_digest()
    (copy / "attacks" / "new_member.py").write_text("X = 1\n")  # a new attack module counts
    assert source_digest(copy) != changed


def test_git_commit_is_the_checkouts_head():
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE, capture_output=True,
                          text=True)
    expected = proc.stdout.strip() if proc.returncode == 0 else None
    assert eval_version.git_commit() == expected
