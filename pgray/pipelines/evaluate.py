"""Evaluate a checkpoint file on a test split and write metrics.json + panels (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgray.config import EvalConfig
from pgray.pipelines.components.rows import identity_columns
from pgray.tracking.models import FetchedModel


def fetch_registered(model_uri: str, mlflow_uri: str | None, dest: Path) -> FetchedModel:
    """A logged or registered model (`models:/...`) of the store `mlflow_uri` (default
    MLFLOW_TRACKING_URI, else ./mlflow.db) as local files under `dest`."""
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri
    from pgray.tracking.models import fetch_model

    uri = resolve_tracking_uri(mlflow_uri)
    check_tracking_uri(uri)
    return fetch_model(uri, model_uri, dest)


# the flags of pgray.evaluate that are not settings of the evaluation (a fetched model's own
# settings stand unless a flag beyond these differs from its default)
NOT_SETTINGS = frozenset({"checkpoint", "mlflow_uri", "config", "dataset", "root", "category",
                          "mask_resize", "batch_size", "n_panels", "out", "quiet"})


def resolve_checkpoint(given_path: str, mlflow_uri: str | None, out: Path,
                       flags: dict[str, Any], given: set[str]
                       ) -> tuple[Path, FetchedModel | None, dict[str, Any]]:
    """--checkpoint as a file: itself and the flags' settings. As `models:/...`: the model
    fetched under OUT/model and its own settings unless flags change them (said)."""
    if not given_path.startswith("models:/"):
        return Path(given_path), None, flags
    fetched = fetch_registered(given_path, mlflow_uri, out / "model")
    settings, said = registered_settings(fetched, flags, given)
    print(f"{given_path}: {said}", flush=True)
    return fetched.checkpoint, fetched, settings


def registered_settings(fetched: FetchedModel, flags: dict[str, Any], given: set[str]
                        ) -> tuple[dict[str, Any], str]:
    """The evaluation of a fetched model: the settings its numbers came from (its benchmark's
    suite, budgets, threats and precision), with the batch and panels of the flags; or the
    flags' settings where any of them was given. Returns them and what was chosen."""
    if given - NOT_SETTINGS:
        return flags, "evaluated with the flags given, not the settings its numbers came from"
    keep = {k: flags[k] for k in ("n_panels", "batch_size") if k in given or k == "n_panels"}
    return fetched.manifest["eval"] | keep, (
        f"model {fetched.manifest['model_id']}, evaluated with the settings of benchmark"
        f" {fetched.manifest['benchmark']}")


def evaluate_checkpoint(
    checkpoint: Path,
    data_overrides: dict[str, Any],
    eval_cfg: EvalConfig,
    out: Path,
    *,
    progress: bool = True,
    device=None,
    reference_model=None,
    fetched: FetchedModel | None = None,
) -> dict[str, Any]:
    """Any detector checkpoint (PatchGuard, baseline, reference state dict) on its test split
    (the one it was trained on unless `data_overrides` say otherwise). `fetched`: the MLflow
    model the checkpoint was fetched from: its id goes on every row and card, and its
    registered worst case is set beside this run's."""
    import pgray
    from pgray.config import DataConfig
    from pgray.config.base import from_dict, to_dict
    from pgray.core.certify import certified_rows
    from pgray.core.device import pick_device
    from pgray.core.eval_version import EVAL_VERSION, git_commit
    from pgray.core.robustness import evaluate_robustness
    from pgray.core.scoring import panel_indices
    from pgray.data.dataset import load_split, resolve_root
    from pgray.data.samples import split_fingerprint
    from pgray.detectors.loading import load_detector
    from pgray.errors import ConfigError
    from pgray.io import ensure_dir, file_sha256, write_json
    from pgray.tracking.cards import build_cards, write_cards
    from pgray.tracking.plots import write_panels

    device = device or pick_device()
    loaded = load_detector(checkpoint, reference_model)
    if loaded.data is None and not {"dataset", "category"} <= set(data_overrides):
        raise ConfigError(f"{checkpoint} is a {loaded.detector} file without its data: give"
                          " --dataset, --root and --category")
    base = {} if loaded.data is None else to_dict(loaded.data)
    data_cfg = from_dict(DataConfig, base | data_overrides, "data")
    model = loaded.model.to(device)
    dataset = load_split(data_cfg, "test", model.img_size)
    out = ensure_dir(out)
    sha = file_sha256(checkpoint)
    identity = identity_columns(
        data_cfg, checkpoint=checkpoint, sha256=sha, detector=loaded.detector, loaded=loaded,
        fingerprint=split_fingerprint(dataset.samples, resolve_root(data_cfg)),
        git_commit=git_commit())
    if fetched is not None:
        identity |= {"model_id": fetched.manifest["model_id"],
                     "detector": fetched.manifest["detector"]}
    rows, outputs = evaluate_robustness(
        model, dataset, eval_cfg, device=device, identity=identity, progress=progress,
        keep=panel_indices(dataset, eval_cfg.n_panels),
    )
    certified = [] if eval_cfg.certify is None else certified_rows(
        model, dataset, eval_cfg, rows, device=device, identity=identity, progress=progress)
    panels = write_panels(outputs, dataset, out, eval_cfg.n_panels)
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha,
        "detector": loaded.detector,
        "backbone_weights": loaded.backbone,
        "suite": to_dict(eval_cfg.suite),
        "dataset": data_cfg.dataset,
        "category": data_cfg.category,
        "split": identity["split"],
        "mask_resize": data_cfg.mask_resize,
        "pgray_version": pgray.__version__,
        "eval_version": EVAL_VERSION,
        "git_commit": git_commit(),
        "results": rows,
        "panels": [str(p) for p in panels],
    }
    if eval_cfg.certify is not None:
        result |= {"certify": to_dict(eval_cfg.certify), "certified": certified}
    cards = write_cards(build_cards(rows + certified, git_commit=git_commit()), out)
    result["cards"] = [str(p) for p in cards]
    if fetched is not None:
        result["model_id"] = fetched.manifest["model_id"]
        result["registered"] = reproduction_line(fetched, rows)
    write_json(out / "metrics.json", result)
    return result



def reproduction_line(model: FetchedModel, rows: list[dict[str, Any]]) -> str:
    """The model's recorded worst-case AD at its headline budget beside this run's."""
    from pgray.tracking.models import headline

    recorded = headline(model.cards())
    if recorded is None or recorded["worst_case_ad"] is None:
        return "the model records no worst case to compare with"
    mine = next((r for r in rows if r["attack"] == "worst_case"
                 and (r.get("threat") or "linf") == recorded["threat"]
                 and r["eps"] == recorded["eps"]), None)
    said = (f"recorded worst-case AD {recorded['worst_case_ad']:.4f}"
            f" [{recorded['worst_case_ad_ci_low']:.4f}, {recorded['worst_case_ad_ci_high']:.4f}]"
            f" ({recorded['threat']} eps {recorded['eps']:g})")
    if mine is None:
        return f"{said}; this run has no worst case at that budget"
    inside = (recorded["worst_case_ad_ci_low"] <= mine["image_auroc"]
              <= recorded["worst_case_ad_ci_high"])
    return (f"{said}; this run {mine['image_auroc']:.4f}"
            f" ({'inside' if inside else 'OUTSIDE'} the recorded interval)")
