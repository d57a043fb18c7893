"""Small builders shared by tests."""

from __future__ import annotations

import ast
from pathlib import Path

from pgray.config import ExperimentConfig, merge
from pgray.config.base import to_dict


def tiny_experiment(root: Path, category: str = "disc", **overrides) -> ExperimentConfig:
    """A config that trains in seconds on the CPU: img 32, patch 8, depth 2, short PGD."""
    from pgray.config import tiny_model_config

    base = {
        "data": {"dataset": "synthetic", "root": str(root), "category": category},
        "model": to_dict(tiny_model_config(img_size=32)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        # proxy_every 1: tests read the proxy at every epoch (the default spaces them out)
        "train": {"epochs": 2, "batch_size": 4, "holdout_fraction": 0.25, "proxy_steps": 2,
                  "proxy_every": 1,
                  "attack": {"eps": 8.0, "steps": 2}, "max_steps_per_epoch": 2},
        "eval": {"eps": [8.0], "attack": {"steps": 3}, "batch_size": 8, "n_panels": 1},
    }
    return ExperimentConfig.from_dict(merge(base, overrides))


def kill_processes_mentioning(marker: str) -> None:
    """SIGKILL every process whose command line contains `marker` (e.g. the temp dir of a Ray
    a test started): stops what the test started, nothing else."""
    import os
    import signal

    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


# a worst-case row's `suite_members` column, decoded: what cards and the leaderboard read
SUITE_MEMBERS = [
    {"name": "protocol", "method": "pgd", "library": "pgray", "objective": "mask",
     "steps": 1000, "restarts": 1, "queries": 0},
    {"name": "det_topk", "method": "pgd", "library": "pgray", "objective": "image_score",
     "steps": 100, "restarts": 2, "queries": 0},
    {"name": "square_det", "method": "square", "library": "torchattacks",
     "objective": "image_score", "steps": 0, "restarts": 1, "queries": 1000}]


def file_imports(path: Path, with_names: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (function
    bodies and TYPE_CHECKING blocks too); `with_names` adds each name imported from a module
    (`from pgray.pipelines import benchmark` also imports pgray.pipelines.benchmark)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if with_names:
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out
