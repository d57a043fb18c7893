"""A result row's identity columns have one rule, whether `python -m pgray.evaluate` or a
benchmark job wrote the row: the `split` column names the VisA split the layout read."""

from __future__ import annotations

import torch
from datatrees import write_visa

from pgray.config import DataConfig, EvalConfig, ExperimentConfig, tiny_model_config
from pgray.config.base import from_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.core.checkpoint import save_checkpoint
from pgray.core.model import PatchGuard

# the layout's own switch (`options`), as a benchmark entry or a search space writes it
OPTIONS = {"visa_split": "reference"}


def _checkpoint(tmp_path):
    config = ExperimentConfig(model=tiny_model_config(img_size=32))
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "checkpoint.pt", PatchGuard(config.model), config)


def test_evaluate_and_a_benchmark_job_name_the_split_the_layout_read(tmp_path):
    """Both read VisA with `options: {visa_split: reference}` (the reference split: no
    split_csv rows for its test images). The evaluate command's rows said `1cls` (its rule
    read the config's field, not the layout's options); the job's said `reference`."""
    from pgray.pipelines.components.job_worker import JobEvaluator
    from pgray.pipelines.components.jobs import CLEAN, jobs_for
    from pgray.pipelines.evaluate import evaluate_checkpoint

    root, ckpt = write_visa(tmp_path / "visa"), _checkpoint(tmp_path)
    eval_cfg = from_dict(EvalConfig, {"eps": [8.0], "attack": {"steps": 1}, "suite": {
        "name": "protocol"}, "batch_size": 8, "n_panels": 0}, "eval")
    evaluated = evaluate_checkpoint(ckpt, {"dataset": "visa", "root": str(root),
                                           "category": "candle", "options": OPTIONS},
                                    eval_cfg, tmp_path / "eval", progress=False)
    bench = from_dict(BenchmarkConfig, {"name": "t", "eps": [8.0], "steps": [1],
                                        "suite": "protocol", "datasets": [{
                                            "dataset": "visa", "root": str(root),
                                            "categories": ["candle"], "options": OPTIONS,
                                            "checkpoint": str(ckpt)}]})
    job, = jobs_for(bench, bench.entries()[0], "candle", grid=[(CLEAN, 0.0, [], "linf")])
    job_rows = JobEvaluator().run(job)["rows"]
    assert {r["split"] for r in evaluated["results"]} == {"reference"}
    assert evaluated["split"] == "reference"
    assert {r["split"] for r in job_rows} == {"reference"}
    # the same data fingerprint: both scored the same test images
    assert {r["data_fingerprint"] for r in evaluated["results"] + job_rows} == {
        job.data_fingerprint}


def test_the_split_column_follows_the_layouts_reading():
    from pgray.pipelines.components.rows import split_name

    assert split_name(DataConfig(dataset="visa")) == "1cls"
    assert split_name(DataConfig(dataset="visa", visa_split="reference")) == "reference"
    assert split_name(DataConfig(dataset="visa", options=OPTIONS)) == "reference"
    assert split_name(DataConfig(dataset="mvtec", options=OPTIONS)) == "official"
