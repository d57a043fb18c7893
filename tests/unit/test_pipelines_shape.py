"""The pipelines room's shape, enforced: each command a straight line down the layers.
Components (pure or worker side) never import the runners (driver side), a driver or a
command; runners never import a driver or a command; nothing under pipelines/ imports Ray;
tracking never imports pipelines/ or a command; only the commands import a command module.
Imports at any depth count, those under TYPE_CHECKING too."""

from __future__ import annotations

from pathlib import Path

from helpers import file_imports

PACKAGE = Path(__file__).resolve().parents[2] / "pgray"
COMMANDS = {f"pgray.{p.stem}" for p in PACKAGE.glob("*.py")} - {
    "pgray.__init__", "pgray.errors", "pgray.io"}
PIPELINES = PACKAGE / "pipelines"
DRIVERS = {f"pgray.pipelines.{p.stem}" for p in PIPELINES.glob("*.py") if p.stem != "__init__"}


def _imports(path: Path) -> list[tuple[int, str]]:
    return file_imports(path, with_names=True)


def _bad(folder: Path, refused) -> list[str]:
    modules = sorted(folder.rglob("*.py"))
    assert modules, f"{folder} holds no modules"  # the rule guards something
    return [f"{p.relative_to(PACKAGE)}:{line} imports {name}" for p in modules
            for line, name in _imports(p) if refused(name)]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_components_import_no_runner_driver_or_command():
    bad = _bad(PIPELINES / "components", lambda n: _under(n, "pgray.pipelines.runners")
               or _under(n, "pgray.pipelines.plan") or n in DRIVERS or n in COMMANDS)
    assert not bad, bad


def test_runners_import_no_driver_or_command():
    bad = _bad(PIPELINES / "runners", lambda n: _under(n, "pgray.pipelines.plan")
               or n in DRIVERS or n in COMMANDS)
    assert not bad, bad


def test_nothing_under_pipelines_imports_ray():
    bad = _bad(PIPELINES, lambda n: _under(n, "ray"))
    assert not bad, bad


def test_tracking_imports_no_pipeline_or_command():
    bad = _bad(PACKAGE / "tracking", lambda n: _under(n, "pgray.pipelines") or n in COMMANDS)
    assert not bad, bad


def test_only_commands_import_a_command():
    folders = [p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    bad = [b for folder in folders for b in _bad(folder, lambda n: n in COMMANDS)]
    assert not bad, bad
