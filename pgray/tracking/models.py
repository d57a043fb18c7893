"""MLflow logged models: each checkpoint a benchmark evaluated (the benchmark's, and a sweep's
final evaluation's) becomes a logged model that carries everything needed to load and evaluate
it again: the checkpoint file itself (its config inside), `pgray_model.json` (what it is, the
evaluation settings its numbers came from, its key figures) and its robustness cards. Its
numbers are logged on an evaluation run of its own (`pgray.kind: model-eval`, a child of the
benchmark's run), linked to the model and to the test split as an MLflow dataset whose digest
is the split's fingerprint; its key figures are tags, so `mlflow.search_logged_models` and the
UI's model pages compare models without opening a file.

`fetch_model` brings a logged or registered model (`models:/m-...`, `models:/NAME@champion`,
`models:/NAME/3`) back as a local checkpoint and its manifest (`pgray.evaluate --checkpoint`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.errors import CheckpointError
from pgray.tracking.cards import card_filename
from pgray.tracking.lineage import TEST, log_dataset_input, split_dataset

MANIFEST = "pgray_model.json"
MANIFEST_SCHEMA = "pgray.model"
MODEL_TYPE = "pgray-detector"
MODEL_URI_PREFIX = "models:/"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
# the tags a logged model and a registered version carry (and the like-with-like keys)
LIKE_KEYS = ("data_fingerprint", "suite", "eval_version", "threat", "eps")


def is_model_uri(text: str | Path) -> bool:
    return str(text).startswith(MODEL_URI_PREFIX)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def headline(cards: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A model's key figures from its cards: the L-inf card's largest budget (else the first
    card's largest), its worst-case and protocol AD (image AUROC) with the worst case's
    interval, the clean AD, the certified AD per radius, and what makes two such numbers
    comparable (`LIKE_KEYS`: the split's fingerprint, the suite and its members, the
    evaluation version, the threat and the budget). None where no card has a budget."""
    ranked = sorted(cards, key=lambda c: c["threat"] != "linf")
    card = next((c for c in ranked if c.get("robust")), None)
    if card is None:
        return None
    budget = max(card["robust"], key=lambda b: b["eps"])
    worst = (budget.get("worst_case") or {}).get("image_auroc") or {}
    protocol = (budget.get("protocol") or {}).get("image_auroc") or {}
    clean = (card.get("clean") or {}).get("image_auroc") or {}
    certified = {f"{c['radius']:g}": c["certified"]["image_auroc"]["value"]
                 for c in card.get("certified") or [] if c.get("radius") is not None}
    return {
        "detector": card["detector"], "dataset": card["data"]["dataset"],
        "category": card["data"]["category"], "seed": card["model"].get("seed"),
        "data_fingerprint": card["data"].get("fingerprint"),
        "suite": json.dumps(budget.get("suite"), sort_keys=True),
        "eval_version": budget.get("eval_version"),
        "threat": card["threat"], "eps": budget["eps"],
        "worst_case_ad": _number(worst.get("value")),
        "worst_case_ad_ci_low": _number(worst.get("ci_low")),
        "worst_case_ad_ci_high": _number(worst.get("ci_high")),
        "protocol_ad": _number(protocol.get("value")),
        "clean_ad": _number(clean.get("value")),
        "certified_ad": certified,
        "unreliable": bool(card.get("unreliable")),
    }


def headline_tags(figures: dict[str, Any]) -> dict[str, str]:
    """The key figures as `pgray.*` tags (the suite as its digest: tags are short)."""
    import hashlib

    tags = {}
    for key, value in figures.items():
        if key == "suite":
            value = hashlib.sha256(value.encode()).hexdigest()[:16]
        elif key == "certified_ad":
            value = json.dumps(value, sort_keys=True)
        if value is not None:
            tags[f"pgray.{key}"] = str(value)
    return tags


def _metric_items(rows: list[dict[str, Any]], model_id: str, dataset) -> list:
    """Each row's numbers (clean; protocol and worst case per threat and budget; certified
    per radius), with their intervals, linked to the model and the test split."""
    import time

    from mlflow.entities import Metric

    values: dict[str, float] = {}
    for r in rows:
        attack = r.get("attack")
        if attack == "clean":
            prefix = "clean"
        elif attack in ("protocol", "worst_case"):
            prefix = f"{r.get('threat') or 'linf'}_eps{r['eps']:g}/{attack}"
        elif attack == "certified":
            for side in ("certified", "attacked", "smoothed"):
                for m in METRICS:
                    values[f"certified_r{r['radius']:g}/{side}/{m}"] = r.get(f"{side}_{m}")
            continue
        else:
            continue
        for m in METRICS:
            for tail in ("", "_ci_low", "_ci_high"):
                values[f"{prefix}/{m}{tail}"] = r.get(f"{m}{tail}")
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0, model_id=model_id, dataset_name=dataset.name,
                   dataset_digest=dataset.digest)
            for k, v in values.items() if _number(v) is not None]


@dataclass
class ModelFiles:
    """One evaluated checkpoint as its result rows name it."""

    checkpoint: Path
    sha256: str
    detector: str
    dataset: str
    category: str
    root: str | None
    seed: int | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> ModelFiles:
        seed = row.get("seed")
        return cls(Path(row["checkpoint"]), row["checkpoint_sha256"], row["detector"],
                   row["dataset"], row["category"], row.get("data_root"),
                   None if _number(seed) is None else int(seed))


def model_key(row: dict[str, Any]) -> tuple[str | None, str]:
    """Which model a row is of: its checkpoint's digest and the detector it was loaded as."""
    return row.get("checkpoint_sha256"), row.get("detector") or "patchguard"


def eval_settings(cfg) -> dict[str, Any]:
    """The evaluation a benchmark ran on each model, as `EvalConfig` keys: what
    `pgray.evaluate` runs on a fetched model when no flag says otherwise (the protocol at the
    grid's most steps and restarts: the benchmark's `protocol` column)."""
    import dataclasses

    from pgray.config.base import to_dict

    attack = dataclasses.replace(cfg.attack, steps=max(cfg.steps), restarts=max(cfg.restarts))
    return {"eps": list(cfg.eps), "attack": to_dict(attack), "suite": to_dict(cfg.suite),
            "threats": to_dict(cfg.threats), "batch_size": cfg.batch_size, "n_panels": 0,
            "certify": None if cfg.certify is None else to_dict(cfg.certify)}


def log_models(uri: str, experiment_id: str, parent_id: str, cfg,
               rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """A logged model per checkpoint the rows are of (`log_model`); returns their ids by
    `model_key`. A model whose file is gone (rows of an earlier run) is left out, said."""
    import sys
    from collections import defaultdict

    settings = eval_settings(cfg)
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("checkpoint") and r.get("checkpoint_sha256") and r.get("data_fingerprint"):
            by_model[model_key(r)].append(r)
    ids = {}
    for key, mine in by_model.items():
        files = ModelFiles.of(mine[0])
        if not files.checkpoint.is_file():
            print(f"note: {files.checkpoint} is gone: no logged model of it", file=sys.stderr)
            continue
        ids[key] = log_model(uri, experiment_id, parent_id, cfg.name, files, mine, settings)
    return ids


def log_model(uri: str, experiment_id: str, parent_id: str, bench: str, files: ModelFiles,
              rows: list[dict[str, Any]], eval_settings: dict[str, Any]) -> str:
    """The logged model of one checkpoint (found again by its benchmark run and digest, so a
    re-run updates it instead of adding another), its evaluation run with the test split as
    input and the numbers linked to both. Returns the model id; the cards and key figures
    follow once they are built (`finish_model`)."""
    from pgray.tracking.mlflow_runs import open_run
    from pgray.tracking.mlflow_store import client_for

    client = client_for(uri)
    name = f"{files.detector}-{files.dataset}-{files.category}" + (
        "" if files.seed is None else f"-seed{files.seed}")
    run = open_run(uri, f"model-eval:{bench}:{files.sha256[:16]}:{files.detector}",
                   run_name=f"model {name}", parent_run_id=parent_id,
                   tags={"pgray.kind": "model-eval", "dataset": files.dataset,
                         "category": files.category, "detector": files.detector})
    where = (f"tags.`pgray.checkpoint_sha256` = '{files.sha256}' AND "
             f"tags.`pgray.detector` = '{files.detector}' AND source_run_id = '{run.run_id}'")
    found = client.search_logged_models([experiment_id], filter_string=where, max_results=1)
    if found:
        model_id = found[0].model_id
    else:
        model_id = client.create_logged_model(
            experiment_id, name=name, source_run_id=run.run_id, model_type=MODEL_TYPE,
            tags={"pgray.checkpoint_sha256": files.sha256, "pgray.detector": files.detector,
                  "pgray.benchmark": bench},
            params={"checkpoint_file": files.checkpoint.name, "detector": files.detector,
                    "dataset": files.dataset, "category": files.category}).model_id
    first = rows[0]
    dataset = split_dataset(files.dataset, files.category, TEST, first["data_fingerprint"],
                            files.root, first.get("split"))
    log_dataset_input(client, run.run_id, dataset, TEST)
    items = _metric_items(rows, model_id, dataset)
    for i in range(0, len(items), 200):
        client.log_batch(run.run_id, metrics=items[i : i + 200])
    manifest = {"schema": MANIFEST_SCHEMA, "model_id": model_id,
                "checkpoint": files.checkpoint.name, "checkpoint_sha256": files.sha256,
                "detector": files.detector, "dataset": files.dataset,
                "category": files.category, "seed": files.seed, "benchmark": bench,
                "eval": eval_settings, "data_fingerprint": first["data_fingerprint"],
                "eval_run_id": run.run_id}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        client.log_model_artifacts(model_id, tmp)
    _log_checkpoint(client, model_id, files.checkpoint)
    client.set_terminated(run.run_id)
    return model_id


def _log_checkpoint(client, model_id: str, checkpoint: Path) -> None:
    """The checkpoint alone (not the folder it sits in), under its own name."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(checkpoint, Path(tmp) / checkpoint.name)
        client.log_model_artifacts(model_id, tmp)


def finish_model(uri: str, model_id: str, cards: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model's cards as artifacts (cards/), its key figures as tags, and the model marked
    READY. Returns the key figures."""
    from pgray.tracking.mlflow_store import client_for

    client = client_for(uri)
    figures = headline(cards)
    with tempfile.TemporaryDirectory() as tmp:
        for card in cards:
            path = Path(tmp) / card_filename(card)
            path.write_text(json.dumps(card, indent=1, default=str))
        client.log_model_artifacts(model_id, tmp, "cards")
    if figures is not None:
        client.set_logged_model_tags(model_id, headline_tags(figures))
    client.finalize_logged_model(model_id, "READY")
    return figures


@dataclass
class FetchedModel:
    checkpoint: Path
    manifest: dict[str, Any]

    def cards(self) -> list[dict[str, Any]]:
        """The robustness cards the model was logged with."""
        folder = self.checkpoint.parent / "cards"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def model_id_of(client, model_uri: str) -> str:
    """The logged model a `models:/` URI names: `models:/m-<id>`, `models:/NAME@alias` or
    `models:/NAME/<version>` (resolved with this client: MLflow's own resolution reads its
    global tracking URI)."""
    rest = model_uri.removeprefix(MODEL_URI_PREFIX).rstrip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, number = rest.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        return rest
    return version.tags.get("pgray.model_id") or version.model_id


def fetch_model(uri: str, model_uri: str, dest: Path) -> FetchedModel:
    """A logged or registered model's files under `dest`: the checkpoint (its digest checked
    against the manifest) and the manifest."""
    import mlflow

    from pgray.io import file_sha256
    from pgray.tracking.mlflow_store import client_for

    client = client_for(uri)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        location = client.get_logged_model(model_id_of(client, model_uri)).artifact_location
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location,
                                                         dst_path=str(dest), tracking_uri=uri))
    except mlflow.exceptions.MlflowException as err:
        raise CheckpointError(f"{model_uri}: no such model in {uri} ({err.message})") from None
    path = local / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{model_uri} is not a pgray model (no {MANIFEST} in it)")
    manifest = json.loads(path.read_text())
    checkpoint = local / manifest["checkpoint"]
    if file_sha256(checkpoint) != manifest["checkpoint_sha256"]:
        raise CheckpointError(f"{model_uri}: {checkpoint.name} does not match the digest its"
                              " manifest records")
    return FetchedModel(checkpoint, manifest)


def finish_models(uri: str, ids: dict[tuple[str, str], str],
                  cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each logged model finished with its own cards (`finish_model`); returns the key
    figures by model id (those with a budget)."""
    figures = {}
    for model_id in ids.values():
        mine = [c for c in cards if c["model"].get("model_id") == model_id]
        found = finish_model(uri, model_id, mine)
        if found is not None:
            figures[model_id] = found
    return figures
