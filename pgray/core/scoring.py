"""Scoring a detector on a split, clean, under one attack, or under the attack suite (the
held-out proxy is pgray.core.proxy). One attacked image serves both the detection and the
localization metric.

Rows (one per setting) carry every parameter that defines their number (`describe`), the
metrics, `threat` (linf, l2, patch; none for clean) and `attack`: `clean`, a suite member's name, `worst_case`, or `attack` for a
single setting outside a suite.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from pgray.attacks.objectives import detector_outputs, unit_labels
from pgray.config import AttackConfig, EvalConfig

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class EvalOutputs:
    """Scores of one setting over a split, kept for metrics and panels."""

    scores: np.ndarray  # (N,) image scores
    labels: np.ndarray  # (N,)
    maps: np.ndarray  # (N,H,W) float32 anomaly maps
    masks: np.ndarray  # (N,H,W) uint8 ground truth
    adv_images: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # picked only
    # bootstrap replicates of each metric, filled by `intervals()` (pgray.core.intervals)
    replicates: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False,
                                                          compare=False)

    def metrics(self) -> dict[str, float]:
        from pgray.core.metrics import aupro, image_auroc, pixel_auroc

        out = {"image_auroc": float("nan"), "pixel_auroc": float("nan"), "aupro": float("nan")}
        if len(np.unique(self.labels)) == 2:
            out["image_auroc"] = image_auroc(self.scores, self.labels)
        if self.masks.any() and not self.masks.all():
            out["pixel_auroc"] = pixel_auroc(self.maps, self.masks)
            out["aupro"] = aupro(self.maps, self.masks)
        return out

    def intervals(self, points: dict[str, float]) -> dict[str, float]:
        """Bootstrap 95 % interval columns of the metrics in `points` (NaN ones stay NaN)."""
        from pgray.core.intervals import bootstrap, interval_columns

        self.replicates = bootstrap(self, points)
        return interval_columns(self.replicates)

    def counts(self) -> dict[str, int]:
        return {"n_images": int(len(self.labels)), "n_anomalous": int(self.labels.sum())}


class _Collector:
    """Accumulates per-image scores, maps and ground truth batch by batch (on the CPU)."""

    def __init__(self) -> None:
        self.scores, self.labels, self.maps, self.masks = [], [], [], []
        self.kept: dict[int, torch.Tensor] = {}

    def add(self, model, scores: torch.Tensor, units: torch.Tensor, batch: Batch,
            present: torch.Tensor | None = None) -> None:
        keep = slice(None) if present is None else present.cpu()
        maps = model.anomaly_maps(units)[:, 0].float().cpu()
        self.scores.append(scores.float().cpu()[keep])
        self.maps.append(maps[keep])
        self.labels.append(batch["label"].cpu()[keep])
        self.masks.append(batch["mask"][:, 0].cpu().to(torch.uint8)[keep])

    def keep_images(self, images: torch.Tensor, offset: int, wanted: frozenset[int]) -> None:
        for j in range(images.shape[0]):
            if offset + j in wanted:
                self.kept[offset + j] = images[j].detach().cpu()

    def outputs(self) -> EvalOutputs:
        return EvalOutputs(
            scores=torch.cat(self.scores).numpy(), labels=torch.cat(self.labels).numpy(),
            maps=torch.cat(self.maps).numpy().astype(np.float32),
            masks=torch.cat(self.masks).numpy(), adv_images=self.kept,
        )


def score_batches(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    attack_cfg: AttackConfig | None,
    *,
    device: torch.device,
    keep: frozenset[int] = frozenset(),
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> EvalOutputs:
    """Score every batch clean (attack_cfg None) or under one attack. The attack runs in its
    precision; its images are scored in fp32, as the suite scores its candidates."""
    from pgray.attacks.pgd import attack
    from pgray.core.device import resolve_precision, strict_fp32

    model.eval()
    collected, offset = _Collector(), 0
    for i, batch in enumerate(batches):
        x = batch["image"].to(device, non_blocking=True)  # pinned by test_loader on CUDA
        if attack_cfg is not None and attack_cfg.eps > 0:
            # the reference's unit labels (resized mask); the direction from the image label
            labels = unit_labels(model, batch["mask"].to(device))
            with strict_fp32(device, resolve_precision(attack_cfg.precision, device)):
                x = attack(model, x, labels, attack_cfg, seed=seed + i,
                           image_labels=batch["label"].to(device))
        with torch.no_grad():
            scores, units = detector_outputs(model, x)
        collected.add(model, scores, units, batch)
        collected.keep_images(x, offset, keep)
        offset += x.shape[0]
        if on_batch is not None:
            on_batch(x.shape[0])
    return collected.outputs()


@dataclasses.dataclass
class SuiteOutputs:
    """One suite run over a split: each member's outputs, the worst case, and the checks."""

    members: dict[str, EvalOutputs]
    worst: EvalOutputs
    whitebox_on_subset: EvalOutputs  # white-box detection worst case on the black-box subset
    zero_gradient: dict[str, float]  # objective -> fraction of images with a zero gradient
    clean_scores: np.ndarray  # (N,) the clean candidate's image scores, in the split's order
    anomalous_without_units: int = 0  # anomalous images whose mask leaves no anomalous unit


def score_suite(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    suite_members: list,
    *,
    device: torch.device,
    subset: frozenset[int] = frozenset(),
    keep: frozenset[int] = frozenset(),
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    scorer: torch.nn.Module | None = None,
) -> SuiteOutputs:
    """Run the suite's members on every batch and collect each one and the per-image worst
    case (`pgray.attacks.suite`). `subset`: dataset indices of the black-box members.
    `scorer`: the detector judged (`attack_batch`); None: `model`."""
    from pgray.attacks.suite import Truth, attack_batch, worst_images

    model.eval()
    scorer = model if scorer is None else scorer
    per_member = {m.key: _Collector() for m in suite_members}
    worst, whitebox, clean = _Collector(), _Collector(), []
    zero = {"detection": 0, "localization": 0}
    offset, total, lost = 0, 0, 0
    for i, batch in enumerate(batches):
        x = batch["image"].to(device, non_blocking=True)  # pinned by test_loader on CUDA
        n = x.shape[0]
        mask = batch["mask"].to(device)
        truth = Truth(units=unit_labels(model, batch.get("unit_mask", mask).to(device)),
                      images=batch["label"].to(device),
                      reference_units=unit_labels(model, mask))
        lost += int(truth.lost().sum())
        in_subset = torch.tensor([offset + j in subset for j in range(n)], device=device)
        result = attack_batch(model, x, truth, suite_members, in_subset=in_subset,
                              seed=seed + i, scorer=scorer)
        clean.append(result.clean.scores.float().cpu())
        for member, cand in zip(suite_members, result.candidates):
            present = cand.present if member.subset else None
            per_member[member.key].add(scorer, cand.scores, cand.units, batch, present)
        worst.add(scorer, result.worst_scores, result.worst_units, batch)
        whitebox.add(scorer, result.whitebox_scores, result.worst_units, batch, in_subset)
        worst.keep_images(worst_images(result), offset, keep)
        for key, flags in result.zero_gradient.items():
            zero[key] += int(flags.sum())
        offset += n
        total += n
        if on_batch is not None:
            on_batch(n)
    return SuiteOutputs(
        members={k: c.outputs() for k, c in per_member.items()}, worst=worst.outputs(),
        whitebox_on_subset=whitebox.outputs(),
        zero_gradient={k: v / max(total, 1) for k, v in zero.items()},
        clean_scores=torch.cat(clean).numpy() if clean else np.zeros(0),
        anomalous_without_units=lost,
    )


def pseudo_eval_batches(loader: Iterable[Batch]) -> Iterable[Batch]:
    """Turn (normal, pseudo-anomaly) pairs into an evaluation split: each normal image with an
    empty mask and label 0, each pseudo-anomaly with its pasted mask and label 1."""
    for batch in loader:
        x, xt = batch["image"], batch["pseudo_image"]
        pm = batch["pseudo_mask"].float()
        yield {
            "image": torch.cat([x, xt]),
            "mask": torch.cat([torch.zeros_like(pm), pm]),
            "label": torch.cat([torch.zeros(len(x)), torch.ones(len(xt))]).long(),
        }


def describe_setting(attack_cfg: AttackConfig | None) -> dict[str, Any]:
    if attack_cfg is None:
        return {"setting": "clean", "attack": "clean", "threat": "none", "eps": 0.0,
                "steps": 0, "alpha": 0.0, "restarts": 0}
    aims_at = "detection" if attack_cfg.objective == "image_score" else "both"
    return ({"setting": attack_cfg.setting_name(), "attack": "attack", "aims_at": aims_at}
            | attack_cfg.describe())


def attack_settings(eval_cfg: EvalConfig) -> list[AttackConfig | None]:
    """Clean first, then the protocol attack at each eps (the suite's `protocol` member)."""
    return [None] + [dataclasses.replace(eval_cfg.attack, eps=float(e)) for e in eval_cfg.eps]


def test_loader(dataset, batch_size: int, device: torch.device):
    """Test batches in order. On CUDA two worker processes decode the next batches while the
    GPU attacks this one, into pinned memory (so the copy to the GPU need not block); on the
    CPU the attack uses every core and the batches load in this process."""
    from torch.utils.data import DataLoader

    from pgray.core.device import loader_workers

    workers = min(2, loader_workers(device))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda")


def _timed_row(desc: dict[str, Any], out: EvalOutputs, started: float) -> dict[str, Any]:
    from pgray.core.row_columns import operating_points

    metrics = out.metrics()
    return (desc | metrics | out.intervals(metrics) | operating_points(out.scores, out.labels)
            | out.counts() | {"time_s": time.perf_counter() - started})


def evaluate_model(
    model,
    dataset,
    settings: list[AttackConfig | None],
    *,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    keep: frozenset[int] = frozenset(),
) -> tuple[list[dict[str, Any]], dict[str, EvalOutputs]]:
    """Rows of metrics, one per single setting, and the raw outputs keyed by setting name.
    Each attack's precision is decided for it alone (`members_as_run`)."""
    from pgray.attacks.suite import DETECTION, LOCALIZATION, Member
    from pgray.core.row_columns import members_as_run

    rows, outputs = [], {}
    for attack_cfg in settings:
        desc = describe_setting(attack_cfg)
        if attack_cfg is not None:
            aims = DETECTION if attack_cfg.objective == "image_score" else LOCALIZATION
            (member,), columns = members_as_run(
                model, dataset, [Member("attack", attack_cfg, aims)], device=device,
                batch_size=batch_size)
            attack_cfg = member.cfg
            desc = describe_setting(attack_cfg) | columns[member.key]
        bar = progress_bar(len(dataset), desc["setting"], progress)
        started = time.perf_counter()
        out = score_batches(
            model, test_loader(dataset, batch_size, device), attack_cfg, device=device,
            keep=keep, on_batch=bar.update if bar else None,
        )
        if bar:
            bar.close()
        rows.append(_timed_row(desc, out, started))
        outputs[desc["setting"]] = out
    return rows, outputs


def evaluate_suite(
    model,
    dataset,
    suite_members: list,
    *,
    batch_size: int,
    device: torch.device,
    subset_size: int = 0,
    progress: bool = True,
    keep: frozenset[int] = frozenset(),
    label: str = "suite",
    scorer: torch.nn.Module | None = None,
) -> tuple[list[dict[str, Any]], dict[str, EvalOutputs]]:
    """Rows for each member of one suite run (at one eps) and its worst case; the outputs
    keyed by setting name. The worst-case row records the suite and its members, its
    zero-gradient fractions and the attack on each side alone; the black-box member's row
    the white-box detection worst case on the same subset. `scorer`: the detector judged,
    if not `model` (`attack_batch`)."""
    from pgray.attacks.suite import balanced_subset, planned_work
    from pgray.core.row_columns import members_as_run

    suite_members, columns = members_as_run(model, dataset, suite_members, device=device,
                                            batch_size=batch_size)
    subset = balanced_subset([s.label for s in dataset.samples], subset_size)
    work = planned_work(suite_members, len(dataset), len(subset))
    if progress:
        print(f"{label}: {len(suite_members)} attacks, {work['image_steps']:,} image-steps"
              f" + {work['queries']:,} black-box queries", file=sys.stderr, flush=True)
    bar = progress_bar(len(dataset), label, progress)
    started = time.perf_counter()
    result = score_suite(model, test_loader(dataset, batch_size, device), suite_members,
                         device=device, subset=subset, keep=keep,
                         on_batch=bar.update if bar else None, scorer=scorer)
    if bar:
        bar.close()
    rows, outputs = [], {}
    for member in suite_members:
        desc = (describe_setting(member.cfg) | {"attack": member.name, "aims_at": member.aims_at}
                | columns[member.key])
        row = _timed_row(desc, result.members[member.key], started)
        if member.subset:
            row["whitebox_image_auroc"] = result.whitebox_on_subset.metrics()["image_auroc"]
        rows.append(row)
        outputs[desc["setting"]] = result.members[member.key]
    worst = _worst_row(suite_members, columns, result, rows, started)
    rows.append(worst | {"image_steps": work["image_steps"], "queries": work["queries"]})
    outputs[worst["setting"]] = result.worst
    return rows, outputs


def _worst_row(suite_members: list, columns: dict[str, Any], result: SuiteOutputs,
               rows: list[dict[str, Any]], started: float) -> dict[str, Any]:
    from pgray.attacks.suite import WORST, suite_name
    from pgray.core.row_columns import attacked_sides, suite_columns

    eps, threat = suite_members[0].cfg.eps, suite_members[0].cfg.threat
    steps = max(m.cfg.steps for m in suite_members if not m.black_box)
    setting = f"{WORST}_eps{eps:g}" if threat == "linf" else f"{threat}_{WORST}_eps{eps:g}"
    ran = [columns[m.key] for m in suite_members]
    precision = "bf16" if any(c["precision"] == "bf16" for c in ran) else "fp32"
    reasons = sorted({columns[m.key]["precision_reason"] for m in suite_members})
    if len(reasons) > 1:  # each family's own
        reasons = sorted({f"{m.family}: {columns[m.key]['precision_reason']}"
                          for m in suite_members})
    desc = {"setting": setting, "attack": WORST, "aims_at": "both", "threat": threat,
            "eps": eps, "steps": steps, "restarts": max(m.cfg.restarts for m in suite_members)
            } | ran[0] | {"precision": precision, "precision_reason": "; ".join(reasons)}
    desc.pop("bf16_gap")
    worst = _timed_row(desc, result.worst, started)
    # Pixel AUROC and AUPRO pool blurred maps over images: the per-image pick can sit above a
    # member, and the robust number is the lowest (members on the whole split only).
    whole = [r for r, m in zip(rows, suite_members) if not m.subset]
    for key in ("pixel_auroc", "aupro"):
        values = [r[key] for r in [worst, *whole] if r[key] == r[key]]
        worst[f"{key}_pick"] = worst[key]
        worst[key] = min(values) if values else worst[key]
    worst |= _lowest_intervals(result.worst, [result.members[m.key] for m in suite_members
                                              if not m.subset])
    return worst | suite_columns(suite_name(suite_members), suite_members) | attacked_sides(
        result.worst.scores, result.clean_scores, result.worst.labels) | {
        "zero_grad_detection": result.zero_gradient["detection"],
        "zero_grad_localization": result.zero_gradient["localization"],
        "anomalous_without_units": result.anomalous_without_units,
        "bf16_gap": max((c["bf16_gap"] for c in ran if c["bf16_gap"] is not None),
                        default=None)}


def _lowest_intervals(worst: EvalOutputs, members: list[EvalOutputs]) -> dict[str, float]:
    """Intervals of the lowest localization number over the pick and the members, resample by
    resample (the same images are drawn for each); the pick's replicates become those of the
    row's numbers (paired comparisons read them)."""
    from pgray.core.intervals import interval_columns, lowest

    for key in ("pixel_auroc", "aupro"):
        samples = lowest([c.replicates for c in (worst, *members)], key)
        if samples is not None:
            worst.replicates[key] = samples
    columns = interval_columns(worst.replicates)
    return {k: v for k, v in columns.items() if not k.startswith("image_auroc")}


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def panel_indices(dataset, n: int) -> frozenset[int]:
    """The first n anomalous test images (their attacked versions are kept for panels)."""
    return frozenset([i for i, s in enumerate(dataset.samples) if s.label == 1][:n])
