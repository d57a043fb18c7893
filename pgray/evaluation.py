"""Evaluate one model on one test split, clean and under each attack setting (pure torch)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pgray.config import AttackConfig, EvalConfig
from pgray.engine import EvalOutputs, describe_setting, score_batches


def attack_settings(eval_cfg: EvalConfig) -> list[AttackConfig | None]:
    """Clean first, then the base attack at each eps."""
    return [None] + [dataclasses.replace(eval_cfg.attack, eps=float(e)) for e in eval_cfg.eps]


def test_loader(dataset, batch_size: int, device: torch.device):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                      pin_memory=device.type == "cuda")


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
    """Rows of metrics, one per setting, and the raw outputs keyed by setting name."""
    rows, outputs = [], {}
    for attack_cfg in settings:
        desc = describe_setting(attack_cfg)
        bar = _bar(len(dataset), desc["setting"], progress)
        started = time.perf_counter()
        out = score_batches(
            model, test_loader(dataset, batch_size, device), attack_cfg, device=device,
            keep=keep, on_batch=bar.update if bar else None,
        )
        if bar:
            bar.close()
        rows.append(desc | out.metrics() | {
            "n_images": int(len(out.labels)),
            "n_anomalous": int(out.labels.sum()),
            "time_s": time.perf_counter() - started,
        })
        outputs[desc["setting"]] = out
    return rows, outputs


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def panel_indices(dataset, n: int) -> frozenset[int]:
    """The first n anomalous test images (their attacked versions are kept for panels)."""
    return frozenset([i for i, s in enumerate(dataset.samples) if s.label == 1][:n])


def write_panels(outputs: dict[str, EvalOutputs], dataset, out_dir: Path, n: int) -> list[Path]:
    """PNG panels for the first n anomalous images: image, attacked image, perturbation,
    ground truth, clean map, attacked map (the strongest attack setting)."""
    from pgray.plots import panel

    settings = [k for k in outputs if k != "clean"]
    if n <= 0 or not settings or "clean" not in outputs:
        return []
    clean, adv = outputs["clean"], outputs[settings[-1]]
    picks = [i for i in panel_indices(dataset, n) if i in adv.adv_images]
    paths = []
    for j, i in enumerate(picks):
        image = dataset[i]["image"]
        path = out_dir / f"panel_{j:02d}.png"
        panel(path, image=image, adv_image=adv.adv_images[i],
              mask=clean.masks[i], clean_map=clean.maps[i], adv_map=adv.maps[i],
              title=f"{Path(dataset.samples[i].image_path).name} {settings[-1]}")
        paths.append(path)
    return paths
