"""The shape of the package, enforced: the method core never imports a framework, the Ray layer
never imports the pipelines, one implementation per job, no reading of private attributes of
other libraries' objects, and modules small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pgray"
# Plain PyTorch (and numpy, PIL, ...): runs in a notebook or a unit test without Ray or MLflow.
CORE = ("core", "attacks", "data", "pseudo", "config", "detectors")
FRAMEWORKS = ("ray", "mlflow", "optuna")
MAX_LINES = 400
CATALOGUES = {"data/layouts.py"}  # tables of dataset layouts may grow past MAX_LINES


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_the_method_core_never_imports_ray_mlflow_or_optuna():
    bad = [f"{p.relative_to(PACKAGE)}:{line} imports {name}"
           for folder in CORE if (PACKAGE / folder).is_dir() for p in _modules(folder)
           for line, name in _imports(p) if name.split(".")[0] in FRAMEWORKS]
    assert not bad, bad


def test_the_ray_layer_runs_what_it_is_handed():
    commands = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "errors", "io"}
    bad = [f"{p.relative_to(PACKAGE)}:{line} imports {name}"
           for p in _modules("distributed") for line, name in _imports(p)
           if name.startswith("pgray.pipelines") or name in {f"pgray.{c}" for c in commands}]
    assert not bad, bad


def test_top_level_holds_commands_and_layer_folders_only():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == {"__init__.py", "__main__.py", "errors.py", "io.py", "sweep.py",
                       "train.py", "evaluate.py", "benchmark.py", "leaderboard.py"}, modules
    for name in ("sweep.py", "train.py", "evaluate.py", "benchmark.py", "leaderboard.py"):
        assert len((PACKAGE / name).read_text().splitlines()) < 150, f"{name} is not thin"


def _calls(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                out.append((node.lineno, f"{owner.id}.{node.func.attr}"))
    return out


def test_one_implementation_of_atomic_writes():
    """Temporary files, renames and copies into place live in pgray/io.py only."""
    moves = {"os.replace", "os.rename", "tempfile.mkstemp", "tempfile.mkdtemp",
             "shutil.copyfile", "shutil.copy", "shutil.move"}
    bad = [f"{p.relative_to(PACKAGE)}:{line} {call}" for p in _modules() if p.name != "io.py"
           for line, call in _calls(p) if call in moves]
    assert not bad, bad


def test_one_device_choice_and_one_precision_rule():
    """Only core/device.py asks torch for CUDA or builds an autocast context."""
    bad = []
    for p in _modules():
        if p.relative_to(PACKAGE).as_posix() == "core/device.py":
            continue
        text = p.read_text()
        for needle in ("cuda.is_available()", "torch.autocast(", "is_bf16_supported("):
            if needle in text:
                bad.append(f"{p.relative_to(PACKAGE)}: {needle}")
    assert not bad, bad


def test_no_private_attributes_of_other_objects():
    """pgray reads no `_name` of objects it does not own (ASHA's _trial_info was one)."""
    bad = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self",
                                                                                  "cls"))):
                bad.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert not bad, bad


def test_modules_stay_readable():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= CATALOGUES, long


REPO = PACKAGE.parent
DOC_SOURCES = ("pgray", "benchmarks", "clusters", "docs", "README.md", "Makefile")


def _texts():
    for name in DOC_SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                               and p.suffix in (".py", ".md", ".yaml", ".sh")]
        for f in files:
            yield f, f.read_text()


def test_docs_live_in_the_repo():
    """pgray's prose points at its own docs/ (which exist), never at files outside the repo."""
    import re

    for path, text in _texts():
        for outside in ("METHOD.md", "STACK.md", "ARCHITECTURE.md", "../shared"):
            assert outside not in text, f"{path} points at {outside}"
        for ref in re.findall(r"docs/[\w.-]+\.md", text):
            assert (REPO / ref).is_file(), f"{path} points at missing {ref}"
