"""What a benchmark and a sweep hand back: their results as records the tables, the report and
the commands read (no MLflow, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.tracking.trials import TrialSummary


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]
    parquet: Path
    markdown: Path
    table_text: str
    skipped: int
    ran: int
    mlflow_run_id: str | None = None
    # target key -> the held-out proxy metrics of the evaluated epoch (the sweep's final
    # evaluation fills it in, for the proxy-to-test gap)
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: int = 0  # checkpoints this run trained
    cards: list[Path] = field(default_factory=list)  # OUT/cards/*.json (pgray.tracking.cards)
    peak_actors: int = 0
    incomplete: str = ""  # why the tables are not the whole benchmark (failed jobs); "": whole
    # MLflow logged model id -> its key figures (pgray.tracking.models.headline)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)  # what --register did, one line each


@dataclass
class SweepResult:
    out: Path
    parent_run_id: str
    experiment_path: str
    trials: list[TrialSummary]
    best: dict[str, list[TrialSummary]]
    best_configs: dict[str, list[Path]]
    benchmarks: list[BenchmarkResult] = field(default_factory=list)
    table_text: str = ""
    mlflow_hint: str = ""
    max_concurrent: int = 0
    resumed: bool = False
    wall_s: float = 0.0
    compare_links: dict[str, str] = field(default_factory=dict)  # target -> MLflow compare view
    # proxy vs test over the trials (pgray.tracking.rank_agreement.rank_agreement); {}: off
    rank_agreement: dict[str, Any] = field(default_factory=dict)
    # per target, the test numbers of each evaluated trial and the recipe, and the pick
    # (pgray.pipelines.rank_eval.RankStage.front)
    front: dict[str, Any] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)  # what --register did, one line each
