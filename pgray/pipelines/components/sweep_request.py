"""What a sweep is asked to do (`python -m pgray.sweep` fills it in from its flags), read by the
sweep and by its stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgray.config.search_space import SearchSpace


@dataclass
class SweepRequest:
    space: SearchSpace
    out: Path
    resume: bool = False
    storage: str | None = None
    address: str | None = None
    mlflow_uri: str | None = None
    final_eval: bool = True
    progress: bool = True
    verbose: bool = False  # Ray's full output: Tune's detailed tables, every worker's log
    # register each category's pick as a version of NAME-<category> (pgray.tracking.registry)
    register: str | None = None


def say_progress(req: SweepRequest, text: str) -> None:
    if req.progress:
        print(text, flush=True)
