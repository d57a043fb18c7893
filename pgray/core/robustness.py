"""The robust evaluation of one model on one test split: clean, then the attack suite at each
eps of each threat (its members and the per-image worst case), the adaptive suite's
large-budget check of each threat, then the reliability flags. `python -m pgray.evaluate`
runs it whole; the benchmark runs its parts as separate jobs (`clean_rows`, `suite_rows`,
`check_rows`) and flags the union.
"""

from __future__ import annotations

from typing import Any

import torch

from pgray.config import EvalConfig
from pgray.config.certify import suite_threats
from pgray.core.scoring import EvalOutputs, evaluate_model, evaluate_suite

Rows = list[dict[str, Any]]


def _batch(eval_cfg: EvalConfig, device: torch.device) -> int:
    from pgray.core.device import on_device

    return on_device(eval_cfg.batch_size, device, cpu=32, cuda=256)


def clean_rows(model, dataset, *, batch_size: int, device: torch.device, progress: bool = True,
               keep: frozenset[int] = frozenset()) -> tuple[Rows, dict[str, EvalOutputs]]:
    return evaluate_model(model, dataset, [None], batch_size=batch_size, device=device,
                          progress=progress, keep=keep)


UNITS = {"linf": "/255", "l2": " (L2)", "patch": " (patch area)"}


def suite_rows(model, dataset, eval_cfg: EvalConfig, eps: float, *, device: torch.device,
               progress: bool = True, keep: frozenset[int] = frozenset(),
               threat: str = "linf") -> tuple[Rows, dict[str, EvalOutputs]]:
    """The suite's members and worst case of one threat at one eps (in its unit)."""
    from pgray.attacks.suite import members

    suite = eval_cfg.suite
    return evaluate_suite(
        model, dataset, members(suite, eval_cfg.attack, eps, threat=threat),
        batch_size=_batch(eval_cfg, device), device=device, subset_size=suite.square_images,
        progress=progress, keep=keep,
        label=f"{suite.name} suite, {threat} eps {eps:g}{UNITS[threat]}",
    )


def budgets(eval_cfg: EvalConfig) -> list[tuple[str, float]]:
    """(threat, eps) of every suite run: linf at `eval.eps`, then each of `eval.threats`,
    l2 also at each certified radius (`eval.certify.radii`: the base detector's attacked
    number beside the smoothed one's)."""
    out = [("linf", float(e)) for e in sorted(eval_cfg.eps) if e != 0]
    return out + [(t, e) for t, eps in suite_threats(eval_cfg.threats, eval_cfg.certify)
                  for e in eps]


def check_threats(eval_cfg: EvalConfig) -> list[str]:
    """The threats whose large-budget check runs: linf and every threat evaluated (none for
    the protocol suite)."""
    if eval_cfg.suite.name != "adaptive":
        return []
    return ["linf", *dict.fromkeys(t for t, _ in budgets(eval_cfg) if t != "linf")]


def check_rows(model, dataset, eval_cfg: EvalConfig, *, device: torch.device,
               progress: bool = True) -> Rows:
    """The adaptive suite's large-budget check of each threat evaluated (its attack's row)."""
    from pgray.attacks.suite import large_eps_check

    rows = []
    for threat in check_threats(eval_cfg):
        check = large_eps_check(eval_cfg.suite, eval_cfg.attack, threat)
        more, _ = evaluate_suite(model, dataset, [check], batch_size=_batch(eval_cfg, device),
                                 device=device, progress=progress,
                                 label=f"large-budget check, {threat}")
        rows.append(more[0])
    return rows


def evaluate_robustness(model, dataset, eval_cfg: EvalConfig, *, device: torch.device,
                        identity: dict[str, Any], progress: bool = True,
                        keep: frozenset[int] = frozenset()
                        ) -> tuple[Rows, dict[str, EvalOutputs]]:
    """Every row of one model's robust evaluation, flagged; outputs for panels hold `clean`
    and the worst case at the largest eps. `identity` (dataset, category, checkpoint hash)
    goes into every row: the flags compare rows of one model only."""
    from pgray.attacks.checks import reliability_flags

    rows, outputs = clean_rows(model, dataset, batch_size=_batch(eval_cfg, device), device=device,
                               progress=progress, keep=keep)
    worst_key = None
    for threat, eps in budgets(eval_cfg):
        more, outs = suite_rows(model, dataset, eval_cfg, eps, device=device,
                                progress=progress, keep=keep, threat=threat)
        rows += more
        if worst_key is None or threat == "linf":  # panels: the largest linf eps
            worst_key = more[-1]["setting"]
            outputs[worst_key] = outs[worst_key]
    rows += check_rows(model, dataset, eval_cfg, device=device, progress=progress)
    panels = {"clean": outputs["clean"]} | ({worst_key: outputs[worst_key]} if worst_key else {})
    return reliability_flags([identity | r for r in rows]), panels
