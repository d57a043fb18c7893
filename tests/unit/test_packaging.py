"""What an install of pgray holds: every package pgray imports is installed by the repo's own
steps, and a plain (non-editable) install finds its built-in search spaces from any folder."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pgray"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0))


def installed_by_repo() -> set[str]:
    """Distributions pyproject.toml declares, plus those the Makefile installs --no-deps."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {_requirement_name(d) for d in project["dependencies"]}
    for line in (REPO / "Makefile").read_text().splitlines():
        if "pip install" in line and "--no-deps" in line:
            names |= {_requirement_name(w) for w in line.split() if "==" in w}
    return names


def imported_top_level() -> set[str]:
    """Top-level modules pgray imports anywhere (module top or inside functions)."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"pgray", "__future__"}


def test_every_imported_package_is_installed_by_the_repo():
    owners = packages_distributions()
    declared = installed_by_repo()
    missing = {}
    for module in sorted(imported_top_level()):
        dists = {_norm(d) for d in owners.get(module, [])}
        assert dists, f"pgray imports {module}, which no installed distribution provides"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.slow
def test_plain_install_finds_the_builtin_search_spaces(tmp_path):
    """`pip install .` (not editable) into a folder, then run from another folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "pgray", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    shutil.rmtree(src)  # nothing may be read from the source tree any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import pgray; from pgray.config.search_space import load_search_space,"
              " resolve_space_path\n"
              "print(pgray.__file__)\n"
              "for name in ('demo', 'attention', 'pseudo', 'paper'):\n"
              "    print(load_search_space(resolve_space_path(name)).name)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(site),
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert lines[0].startswith(str(site)), lines[0]  # the installed copy, not the checkout
    assert lines[1:] == ["demo", "attention", "pseudo", "paper"]


def test_the_package_version_is_the_projects():
    import pgray

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert pgray.__version__ == project["version"]
