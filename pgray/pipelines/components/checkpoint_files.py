"""Checkpoint-file rules: which file of a category is evaluated (the proxy-selected best.pt
where this run's checkpoint selected one, else the checkpoint), and a trial's Train checkpoint
fetched as a plain file with its selection and proxy metrics beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.core.checkpoint import SELECTED_FILE

PROXY_FILE = "proxy.json"  # beside a fetched checkpoint: the proxy metrics of its epoch


@dataclass(frozen=True)
class Evaluated:
    """The checkpoint file a category's rows come from."""

    path: Path
    file: str  # best.pt (proxy-selected) or checkpoint.pt (last epoch)
    epoch: int | None


def evaluated_checkpoint(template: Path) -> Evaluated:
    """`best.pt` beside the checkpoint when it holds this checkpoint's selection, else the
    checkpoint itself. A best.pt is this run's only if the checkpoint records a selection
    and both name the same metric, value and epoch: one left by an earlier run in the same
    folder (a run that selected nothing writes none) is never evaluated for a newer one."""
    from pgray.core.checkpoint import read_checkpoint
    from pgray.errors import CheckpointError

    extra = read_checkpoint(template).get("extra") or {}
    best = template.with_name(SELECTED_FILE)
    selected = _selection(extra)
    if selected is None or not best.is_file():
        epoch = extra.get("epochs_done")
        return Evaluated(template, template.name, None if epoch is None else int(epoch))
    found = _selection(read_checkpoint(best).get("extra") or {})
    if found != selected:
        raise CheckpointError(
            f"{best} is not the selection of {template} (it holds {found}, the checkpoint"
            f" selected {selected}): it was left by another run; remove it, or write this"
            " run's again with pgray.core.checkpoint.write_selected")
    return Evaluated(best, best.name, int(selected[2]))


def _selection(extra: dict[str, Any]) -> tuple | None:
    """(metric, value, epoch) of the selection a checkpoint's `extra` records, or None."""
    selected = extra.get("selected")
    return None if not selected else tuple(selected.get(k) for k in ("metric", "value",
                                                                     "epoch"))


def fetch_trial_checkpoint(source: str, dest: Path) -> Path:
    """A trial's Train checkpoint (local, s3:// or gs://) as the plain file `dest`, with the
    proxy-selected weights beside it as best.pt when the trial selected, and the held-out
    proxy metrics of the evaluated epoch as proxy.json (for the proxy-to-test gap)."""
    from pgray.core.checkpoint import read_checkpoint, write_selected
    from pgray.distributed.train import fetch_train_checkpoint
    from pgray.io import write_json

    fetch_train_checkpoint(source, dest)
    selected = write_selected(dest, dest.with_name(SELECTED_FILE))
    if selected is None:  # an earlier run's best.pt in this folder is not this run's
        dest.with_name(SELECTED_FILE).unlink(missing_ok=True)
    extra = read_checkpoint(dest)["extra"]
    epoch = (extra.get("selected") or {}).get("epoch") if selected else extra.get("epochs_done")
    metrics = next((m for e, m in extra.get("history", []) if e + 1 == epoch), {})
    write_json(dest.with_name(PROXY_FILE), {"epoch": epoch} | {
        k: v for k, v in metrics.items() if k.startswith("proxy_")})
    return dest


def read_proxy(folder: Path) -> dict[str, Any]:
    path = folder / PROXY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
