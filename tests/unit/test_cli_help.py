"""Every entry point explains itself with --help and imports no heavy package doing so."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_POINTS = ["pgray.sweep", "pgray.train", "pgray.evaluate", "pgray.benchmark",
                "pgray.leaderboard", "pgray.data",
                "pgray.pseudo", "pgray.detectors", "pgray.__main__"]
HEAVY = ("torch", "ray", "mlflow", "timm", "optuna", "torchattacks", "pyarrow", "anomalib")


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_is_lazy(module):
    code = (f"import runpy, sys\nsys.argv = [{module!r}, '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout[-300:]
