"""The shape of the package, enforced: the layers of docs/INTERFACES.md import downwards only
and no module imports itself back through others, the method core never imports a framework,
the Ray layer never imports the pipelines, one implementation per job, no reading of private
attributes of other libraries' objects, and modules small enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import file_imports

PACKAGE = Path(__file__).resolve().parents[2] / "pgray"
# Plain PyTorch (and numpy, PIL, ...): runs in a notebook or a unit test without Ray or MLflow.
CORE = ("core", "attacks", "data", "pseudo", "config", "detectors")
FRAMEWORKS = ("ray", "mlflow", "optuna")
MAX_LINES = 400
CATALOGUES = {"data/layouts.py"}  # tables of dataset layouts may grow past MAX_LINES


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    return file_imports(path)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in _modules()}


def _resolve(name: str) -> str | None:
    """The pgray module an imported name lives in (the longest module prefix), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _pgray_imports(module: str) -> list[tuple[int, str]]:
    """(line, pgray module) for every import of `module` that reaches a pgray module, at any
    depth (TYPE_CHECKING blocks and function bodies included); `from a import b` counts `a` and,
    where it is a module, `a.b`; relative imports are made absolute."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "pgray" else None
            if target is not None and target != module:
                out.append((node.lineno, target))
    return sorted(set(out))


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported pgray module: line of the first import}."""
    graph: dict[str, dict[str, int]] = {}
    for module in MODULES:
        edges = graph.setdefault(module, {})
        for line, target in _pgray_imports(module):
            edges.setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _one_circle(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """A circle through the component's first module, each step with the line that imports:
    `a (a.py:3) -> b (b.py:9) -> a`."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to the start
        node = queue.pop(0)
        for nxt in graph[node]:
            if nxt == start:
                path = paths[node] + [start]
                return " -> ".join(
                    f"{a} ({MODULES[a].relative_to(PACKAGE.parent)}:{graph[a][b]})"
                    for a, b in zip(path, path[1:])) + f" -> {start}"
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return " <-> ".join(component)


def _top(module: str) -> str:
    """The folder or top-level module a pgray module belongs to (`__init__` for pgray)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle_anywhere_in_pgray():
    graph = _import_graph()
    circles = [f"{_one_circle(c, graph)}\n  (the knot's {len(c)} modules: {', '.join(c)})"
               for c in _cycles(graph)]
    assert not circles, "import cycles:\n" + "\n".join(circles)


def test_the_cycle_finder_finds_a_cycle_and_names_its_lines():
    graph = {"pgray.a": {"pgray.b": 3}, "pgray.b": {"pgray.c": 5}, "pgray.c": {"pgray.a": 7},
             "pgray.d": {"pgray.a": 1}}
    assert _cycles(graph) == [["pgray.a", "pgray.b", "pgray.c"]]
    assert _cycles({"pgray.a": {"pgray.b": 1}, "pgray.b": {}}) == []


def _layers() -> list[list[str]]:
    """The layer order of docs/INTERFACES.md (its ```layers block), lowest first."""
    text = (PACKAGE.parent / "docs" / "INTERFACES.md").read_text()
    blocks = re.findall(r"```layers\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/INTERFACES.md needs one ```layers block"
    return [line.split() for line in blocks[0].splitlines() if line.split()]


def test_interfaces_md_gives_every_folder_and_top_level_module_one_layer():
    listed = [name for layer in _layers() for name in layer]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == {_top(m) for m in MODULES}


def test_no_module_imports_a_higher_layer():
    level = {name: i for i, layer in enumerate(_layers()) for name in layer}
    climbs = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
              for m in MODULES for line, target in _pgray_imports(m)
              if level[_top(target)] > level[_top(m)]]
    assert not climbs, "imports of a higher layer:\n" + "\n".join(climbs)


def test_components_never_import_runners_or_commands():
    """The pipelines' pure and worker-side pieces (pipelines/components/) never reach for the
    driver side (pipelines/runners/) or a command; only a command imports a command; Ray is
    reached through distributed/, never imported under pipelines/."""
    commands = set(_layers()[-1])
    bad = []
    for m, path in MODULES.items():
        where = path.relative_to(PACKAGE.parent)
        for line, target in _pgray_imports(m):
            if _top(target) in commands and _top(m) not in commands:
                bad.append(f"{where}:{line} imports the command {target}")
            if (m.startswith("pgray.pipelines.components")
                    and (target.startswith("pgray.pipelines.runners")
                         or _top(target) in commands)):
                bad.append(f"{where}:{line} imports {target}")
        if m.startswith("pgray.pipelines."):
            bad += [f"{where}:{line} imports {name}" for line, name in _imports(path)
                    if name.split(".")[0] == "ray"]
    assert not bad, "\n".join(bad)


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


REPO = PACKAGE.parent


def test_modules_stay_readable():
    """pgray's modules and the cluster tools (clusters/) stay under MAX_LINES."""
    files = _modules() + sorted((REPO / "clusters").rglob("*.py"))
    long = {p.relative_to(REPO).as_posix(): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= {f"pgray/{name}" for name in CATALOGUES}, long
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
