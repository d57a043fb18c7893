"""Security properties: safe deserialisation, no shell strings, names and servers confined."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pgray.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "pgray"


def _calls(name: str):
    """(file, call node) for every call of `name` (an attribute or a function) in pgray/."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    yield path, node


def test_every_torch_load_is_weights_only():
    loads = list(_calls("load"))
    torch_loads = [(p, n) for p, n in loads if isinstance(n.func, ast.Attribute)
                   and getattr(n.func.value, "id", "") == "torch"]
    assert torch_loads, "expected torch.load calls in pgray"
    for path, node in torch_loads:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, (
            f"{path}:{node.lineno} torch.load without weights_only=True")


def test_no_unsafe_yaml_or_shell():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path
        assert "shell=True" not in text and "os.system(" not in text, path
    for builtin in ("eval", "exec"):
        bare = [(p, n.lineno) for p, n in _calls(builtin) if isinstance(n.func, ast.Name)]
        assert not bare, f"{builtin}() called at {bare}"


def test_yaml_with_python_objects_is_refused(tmp_path):
    from pgray.config.base import load_yaml

    bad = tmp_path / "evil.yaml"
    bad.write_text("train: !!python/object/apply:os.system ['touch /tmp/pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_yaml(bad)


class _TouchOnLoad:
    """Unpickling this object creates `path`: pickled code that runs would leave a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    """A checkpoint with the real format tag that smuggles code is refused, and the code
    never runs (plain pickle loading would have run it: checked on a copy)."""
    from pgray.core.checkpoint import FORMAT_TAG, FORMAT_VERSION, read_checkpoint
    from pgray.errors import CheckpointError

    def evil(marker: Path) -> Path:
        path = tmp_path / f"evil-{marker.name}.pt"
        torch.save({"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "config": {},
                    "architecture": {}, "state_dict": {}, "payload": _TouchOnLoad(marker)}, path)
        return path

    control = tmp_path / "control-ran"
    torch.load(evil(control), weights_only=False)  # the payload is live: unsafe loading runs it
    assert control.exists()
    marker = tmp_path / "payload-ran"
    with pytest.raises(CheckpointError, match="evil-payload-ran.pt"):
        read_checkpoint(evil(marker))
    assert not marker.exists()


def test_user_names_cannot_escape_folders():
    from pgray.errors import PgrayError
    from pgray.io import check_name

    assert check_name("run-1.v2") == "run-1.v2"
    for name in ("..", "../x", "a/../../b", "/etc", ".hidden", "", "a b"):
        with pytest.raises(PgrayError):
            check_name(name)
