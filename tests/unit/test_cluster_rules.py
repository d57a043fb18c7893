"""The rules a real cluster needs, checked without one: checkpoints named with their
filesystem, checkpoint bytes checked on arrival, stores that must already exist on a node,
searched values the model cannot take refused on the driver, and Tune used through its public
interfaces only. (tests/deployment shows each on a deployment-shaped cluster.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgray.errors import CheckpointError, ClusterError, ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "pgray"


def test_an_s3_checkpoint_keeps_its_scheme():
    """Ray hands back `bucket/prefix/...` and keeps the filesystem apart; pgray's URI puts
    the scheme back (the lost scheme failed every fetch: `URI has empty scheme`)."""
    from pyarrow import fs
    from ray.train import Checkpoint

    from pgray.distributed.train import CHECKPOINT_URI, checkpoint_uri, reported_checkpoint

    s3 = fs.S3FileSystem(anonymous=True, endpoint_override="http://127.0.0.1:9",
                         scheme="http", region="us-east-1")
    checkpoint = Checkpoint("bucket/runs/trial/checkpoint_000003", filesystem=s3)
    assert checkpoint_uri(checkpoint) == "s3://bucket/runs/trial/checkpoint_000003"
    local = Checkpoint("/tmp/runs/checkpoint_000001")
    assert checkpoint_uri(local) == "/tmp/runs/checkpoint_000001"
    # a Train run's report names its checkpoint in the result; a one-worker trial's is Tune's
    assert reported_checkpoint({CHECKPOINT_URI: "s3://b/x"}, local) == "s3://b/x"
    assert reported_checkpoint({"loss": 1.0}, checkpoint) == checkpoint_uri(checkpoint)
    assert reported_checkpoint({}, None) is None


def test_checkpoint_bytes_from_the_driver_are_checked_before_use(tmp_path, monkeypatch):
    from pgray.pipelines.components.job_worker import node_copy

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import hashlib
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    data = b"pgray checkpoint bytes"
    sha = hashlib.sha256(data).hexdigest()[:16]
    path = node_copy(data, sha)
    assert path.read_bytes() == data and path.parent.parent == tmp_path
    assert node_copy(data, sha) == path  # written once per content
    with pytest.raises(CheckpointError, match="digest"):
        node_copy(data + b"!", sha)


def test_a_node_without_the_drivers_sqlite_store_is_refused(tmp_path):
    """A worker on a node that joined later would otherwise start an empty store of its own."""
    from pgray.tracking.mlflow_runs import Tracker

    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    tracker = Tracker(uri, "0" * 32, existing=True)  # nothing is asked before the first call
    with pytest.raises(ClusterError, match="does not exist on"):
        _ = tracker.client
    assert not (tmp_path / "absent").exists()


def test_a_searched_value_the_model_cannot_take_is_refused_on_the_driver(synthetic_root):
    """Each searched key is tried at the values that stand for its range before anything is
    submitted (an attention layer beyond a depth-2 backbone failed only in the workers)."""
    from pgray.config import tiny_model_config
    from pgray.config.base import to_dict
    from pgray.config.search_space import space_from_dict
    from pgray.pipelines.components.targets import check_targets, resolve_targets

    space = space_from_dict({
        "name": "layers",
        "fixed": {"data": {"dataset": "synthetic", "root": str(synthetic_root)},
                  "model": to_dict(tiny_model_config(img_size=32)),
                  "loss": {"attention_layers": [1], "attention_weights": [0.1]}},
        "datasets": [{"dataset": "synthetic", "root": str(synthetic_root),
                      "categories": ["weave"]}],
        "search": {"loss.attention_layers": {"type": "categorical",
                                             "values": [[1], [2], [5]]}},
        "budget": {"trials": 2},
    })
    with pytest.raises(ConfigError, match=r"search.loss.attention_layers = \[5\].*layer 5"):
        check_targets(space, resolve_targets(space))


def test_tune_is_used_through_its_public_interfaces():
    """No Tune internals in the per-target search and scheduler: they break silently on a Ray
    upgrade (the trial's storage paths, its result file, its private flags)."""
    source = (PACKAGE / "distributed" / "tune_targets.py").read_text()
    tree = ast.parse(source)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert not names & {"has_reported_at_least_once", "storage", "trial_fs_path",
                        "storage_filesystem", "_trial_info", "_num_stopped"}, names
    assert "EXPR_RESULT_FILE" not in imported
    assert "__dict__" not in names  # nothing saved by pickling an object's whole state
