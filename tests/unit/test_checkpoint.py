"""Checkpoints: round trip, weights_only safety, clear errors, reference state dicts."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from pgray.config import ExperimentConfig, tiny_model_config
from pgray.core.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_into,
    load_reference_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from pgray.core.model import PatchGuard
from pgray.errors import CheckpointError


def experiment(depth: int = 2) -> ExperimentConfig:
    return ExperimentConfig(model=tiny_model_config(depth=depth))


def build(config: ExperimentConfig, seed: int = 0) -> PatchGuard:
    torch.manual_seed(seed)
    return PatchGuard(config.model).eval()


def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class NotData:
    """A class instance: weights_only loading must refuse a pickle of it."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture
def saved(tmp_path):
    config = experiment()
    model = build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(images()).sum().backward()
    optimizer.step()
    extra = {
        "epoch": 3,
        "metrics": {"auroc": np.float64(0.75), "history": [1.0, 0.5]},
        "optimizer": optimizer.state_dict(),
        "rng": torch.arange(4),
    }
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, config, extra)
    return path, model, config


def test_round_trip_restores_weights_config_and_extra(saved):
    path, model, config = saved
    loaded, loaded_config, extra = load_checkpoint(path)
    assert not loaded.training
    assert loaded_config.to_dict() == config.to_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(loaded(images()), model(images()), rtol=0, atol=0)
    assert extra["epoch"] == 3 and extra["metrics"] == {"auroc": 0.75, "history": [1.0, 0.5]}
    assert torch.equal(extra["rng"], torch.arange(4))
    assert extra["optimizer"]["state"][0]["step"].item() == 1
    # Plain data only: torch's safe loader reads the file as is; no temporary file is left.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pgray-patchguard-checkpoint" and raw["pgray_version"]
    assert raw["architecture"]["backbone"] == "vit_tiny_patch16_224"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_load_into_an_existing_model(saved):
    path, model, config = saved
    other = build(config, seed=9)
    extra = load_into(other, read_checkpoint(path))
    torch.testing.assert_close(other(images()), model(images()), rtol=0, atol=0)
    assert extra["epoch"] == 3


def test_unsaveable_extra_is_refused_and_the_old_file_survives(saved):
    path, model, config = saved
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\.bad: NotData"):
        save_checkpoint(path, model, config, {"bad": NotData()})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_config_that_does_not_describe_the_model_is_refused(tmp_path):
    model = build(experiment(depth=2))
    with pytest.raises(CheckpointError, match="depth=3.*depth=2"):
        save_checkpoint(tmp_path / "x.pt", model, experiment(depth=3))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_missing_truncated_and_foreign_files(tmp_path, saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps({"format": "pgray-patchguard-checkpoint"}))
    a_class = tmp_path / "object.pt"
    torch.save({"payload": NotData()}, a_class)
    a_pickle = tmp_path / "object.pkl"
    a_pickle.write_bytes(pickle.dumps(NotData()))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (truncated, random_bytes, as_json, a_class, a_pickle, empty):
        with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
            load_checkpoint(bad)
        assert bad.name in str(err.value)


def test_torch_files_that_are_not_pgray_checkpoints(tmp_path, saved):
    path, model, _ = saved
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a pgray checkpoint"):
        load_checkpoint(plain)
    future = tmp_path / "future.pt"
    torch.save(dict(torch.load(path, weights_only=True), format_version=99), future)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(future)


def test_other_architecture_is_named_when_one_is_expected(saved):
    path, _, _ = saved
    deeper = experiment(depth=3)
    with pytest.raises(CheckpointError, match=r"holds vit_tiny.*depth=2.*depth=3.*expected"):
        load_checkpoint(path, expect=deeper.model)
    with pytest.raises(CheckpointError, match=r"depth=2.*depth=3"):
        check_compatible(read_checkpoint(path), build(deeper))
    with pytest.raises(CheckpointError, match="depth=2"):
        load_into(build(deeper), read_checkpoint(path))
    # Fields that leave the parameters alone (dropout, top_k, smoothing) are compatible.
    relaxed = dataclasses.replace(experiment().model, top_k=5, disc_dropout=0.0)
    model, _, _ = load_checkpoint(path, expect=relaxed)
    check_compatible(read_checkpoint(path), model)


def test_tampered_weights_are_reported(tmp_path, saved):
    path, _, _ = saved
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["disc.head.bias"]
    ckpt["state_dict"]["disc.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    with pytest.raises(CheckpointError, match=r"missing 1 keys: disc\.head\.bias.*disc\.extra"):
        load_checkpoint(broken)


# Reference (github.com/rohban-lab/PatchGuard) module names, written out independently of the
# mapping under test: our prefix -> the reference's.
REFERENCE_NAMES = {
    "backbone.": "feature_extractor.pretrained_model.",
    "disc.pos_embed": "discriminator.positional_encodings",
    "disc.attn.": "discriminator.transformer_encoder.0.attn.",
    "disc.norm.": "discriminator.transformer_encoder.0.layer_norm_1.",
    "disc.mlp.fc1.": "discriminator.transformer_encoder.0.linear.0.",
    "disc.mlp.fc2.": "discriminator.transformer_encoder.0.linear.3.",
    "disc.head.": "discriminator.output_layer.0.",
}


def as_reference(state: dict[str, torch.Tensor], wrapper: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        (ours, theirs), *_ = [(o, t) for o, t in REFERENCE_NAMES.items() if key.startswith(o)]
        out[wrapper + theirs + key[len(ours) :]] = value.clone()
    return out


def test_reference_state_dict_loads_into_our_model():
    config = experiment()
    source = build(config, seed=1)
    reference = as_reference(source.state_dict())
    assert "discriminator.transformer_encoder.0.attn.in_proj_weight" in reference
    assert "feature_extractor.pretrained_model.blocks.0.attn.qkv.weight" in reference
    for wrapper in ("", "module."):
        target = build(config, seed=2)
        load_reference_state_dict(target, as_reference(source.state_dict(), wrapper))
        torch.testing.assert_close(target(images()), source(images()), rtol=0, atol=0)


def test_reference_state_dict_mismatch_lists_keys():
    config = experiment()
    reference = as_reference(build(config).state_dict())
    reference["discriminator.transformer_encoder.1.attn.in_proj_weight"] = torch.zeros(3, 3)
    del reference["discriminator.output_layer.0.bias"]
    with pytest.raises(CheckpointError) as err:
        load_reference_state_dict(build(config), reference)
    message = str(err.value)
    assert "transformer_encoder.1.attn.in_proj_weight" in message
    assert "missing 1 keys: disc.head.bias" in message
    deeper = build(experiment(depth=3))
    with pytest.raises(CheckpointError, match=r"missing .*backbone\.blocks\.2"):
        load_reference_state_dict(deeper, as_reference(build(config).state_dict()))


def _training_file(path, model, config, epochs_done, selected=None):
    """A training checkpoint as a run leaves it: its epochs and, where it selected, the
    selected epoch's weights."""
    extra = {"epochs_done": epochs_done}
    if selected is not None:
        metric, value, epoch = selected
        extra["selected"] = {"metric": metric, "value": value, "epoch": epoch,
                             "state_dict": model.state_dict()}
    return save_checkpoint(path, model, config, extra)


def test_a_best_pt_left_by_an_earlier_run_is_never_evaluated(tmp_path):
    from pgray.core.checkpoint import write_selected
    from pgray.pipelines.components.checkpoint_files import evaluated_checkpoint

    config = experiment()
    model = build(config)
    ckpt, best = tmp_path / "checkpoint.pt", tmp_path / "best.pt"
    # run 1 selects epoch 2 of 3: its best.pt is evaluated, and says so
    _training_file(ckpt, model, config, 3, ("proxy_worst_image_auroc", 0.7, 2))
    write_selected(ckpt, best)
    first = evaluated_checkpoint(ckpt)
    assert (first.path, first.file, first.epoch) == (best, "best.pt", 2)
    # run 2 in the same folder selects nothing: its own last epoch, not run 1's best.pt
    _training_file(ckpt, model, config, 4)
    second = evaluated_checkpoint(ckpt)
    assert (second.path, second.file, second.epoch) == (ckpt, "checkpoint.pt", 4)
    # run 3 selects epoch 4, but best.pt is still run 1's: refused, not evaluated
    _training_file(ckpt, model, config, 5, ("proxy_worst_image_auroc", 0.8, 4))
    with pytest.raises(CheckpointError, match="is not the selection of"):
        evaluated_checkpoint(ckpt)


def test_fetching_a_run_that_selected_nothing_removes_an_earlier_best_pt(tmp_path):
    from pgray.pipelines.components.checkpoint_files import (
        evaluated_checkpoint,
        fetch_trial_checkpoint,
    )

    config = experiment()
    model = build(config)
    dest = tmp_path / "out" / "checkpoint.pt"
    earlier, later = tmp_path / "trial1", tmp_path / "trial2"  # Train checkpoint folders
    _training_file(earlier / "checkpoint.pt", model, config, 3,
                   ("proxy_worst_image_auroc", 0.7, 2))
    _training_file(later / "checkpoint.pt", model, config, 2)
    fetch_trial_checkpoint(str(earlier), dest)  # a trial that selected, fetched here first
    assert dest.with_name("best.pt").is_file()
    fetch_trial_checkpoint(str(later), dest)
    assert not dest.with_name("best.pt").exists()
    assert evaluated_checkpoint(dest).epoch == 2
