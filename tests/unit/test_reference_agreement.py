"""benchmarks/reference_agreement.py without the reference code: --help works and a missing or
wrong checkout is a one-line error (exit 2), before anything is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_agreement.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, cwd=SCRIPT.parents[1])


def test_help_needs_no_reference():
    out = run("--help")
    assert out.returncode == 0 and "--reference" in out.stdout


def test_missing_or_wrong_checkout_is_named(tmp_path):
    out = run("--reference", str(tmp_path / "absent"))
    assert out.returncode == 2 and "no such directory" in out.stderr
    (tmp_path / "patchguard.py").write_text("")
    out = run("--reference", str(tmp_path))
    assert out.returncode == 2
    assert "not a PatchGuard reference checkout, missing loss.py, attack.py" in out.stderr
