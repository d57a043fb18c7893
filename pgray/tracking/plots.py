"""Figures: evaluation panels and robustness curves (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pgray.tracking.tables import across_seeds

if TYPE_CHECKING:
    from pgray.core.scoring import EvalOutputs


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _save(fig, plt, path: Path) -> Path:
    from pgray.io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path


def panel(path: Path, *, image, adv_image, mask, clean_map, adv_map, title: str = "") -> Path:
    img = np.asarray(image.permute(1, 2, 0).cpu().numpy() if hasattr(image, "permute") else image)
    adv = np.asarray(adv_image.permute(1, 2, 0).cpu().numpy()
                     if hasattr(adv_image, "permute") else adv_image)
    delta = adv - img
    scale = max(float(np.abs(delta).max()), 1e-8)
    plt, (fig, axes) = _figure(1, 6, figsize=(15, 2.8))
    vmin = float(min(clean_map.min(), adv_map.min()))
    vmax = float(max(clean_map.max(), adv_map.max()))
    items = [
        ("image", img, {}),
        ("attacked", np.clip(adv, 0, 1), {}),
        (f"perturbation x{1 / scale:.0f}", 0.5 + 0.5 * delta / scale, {}),
        ("ground truth", mask, {"cmap": "gray", "vmin": 0, "vmax": 1}),
        ("clean map", clean_map, {"cmap": "jet", "vmin": vmin, "vmax": vmax}),
        ("attacked map", adv_map, {"cmap": "jet", "vmin": vmin, "vmax": vmax}),
    ]
    for ax, (name, data, kw) in zip(axes, items):
        ax.imshow(np.clip(data, 0, 1) if not kw else data, **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)


def robustness_curve(path: Path, series: dict[str, tuple[list[float], list[float]]],
                     xlabel: str, ylabel: str, title: str) -> Path:
    """One line per series name: x values against AUROC."""
    plt, (fig, ax) = _figure(figsize=(5, 3.5))
    for name, (xs, ys) in sorted(series.items()):
        order = np.argsort(xs)
        style = "--" if "protocol" in name else "-"
        ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], style, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


# One figure per threat: each threat's eps is in its own unit.
CURVE_FILES = {"linf": "auroc_vs_eps.png", "l2": "auroc_vs_eps_l2.png",
               "patch": "auroc_vs_eps_patch.png"}
CURVE_UNITS = {"linf": "eps (1/255)", "l2": "L2 eps (norm on [0, 1] pixels)",
               "patch": "patch area (fraction of the image)"}


def curve_series(rows: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per threat, image AUROC against eps: one series per category, detector and kind (the
    suite's worst case, the robust number, and the strongest protocol run), so no line joins
    two models; rows of several training seeds as their mean."""
    points: dict[tuple[str, str, float], dict] = {}
    for r in across_seeds(rows):
        value = r.get("image_auroc")
        if r.get("attack") not in ("worst_case", "protocol") or not _is_number(value):
            continue
        name = f"{r['dataset']}/{r['category']} {r.get('detector') or 'patchguard'} {r['attack']}"
        key = (r.get("threat") or "linf", name, float(r["eps"]))
        if key not in points or (r.get("steps") or 0) > (points[key].get("steps") or 0):
            points[key] = r
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(dict)
    for (threat, name, eps), r in sorted(points.items()):
        xs, ys = series[threat].setdefault(name, ([], []))
        xs.append(eps)
        ys.append(r["image_auroc"])
    return dict(series)


def robustness_curves(rows: list[dict], out: Path) -> list[Path]:
    """OUT/auroc_vs_eps.png (linf) and one more figure per other threat with rows."""
    return [robustness_curve(Path(out) / CURVE_FILES.get(threat, f"auroc_vs_eps_{threat}.png"),
                             named, CURVE_UNITS.get(threat, "eps"), "image AUROC under attack",
                             f"{threat}: worst case of the suite vs protocol")
            for threat, named in curve_series(rows).items()]


CERTIFIED_CURVE = "certified_vs_radius_{name}.png"  # one per dataset with certified rows


def certified_series(rows: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per dataset, per model and category (`category detector`): the radii, and at each its
    certified and attacked image AUROC and the smoothed detector's clean one; rows of
    several training seeds as their mean."""
    out: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(dict)
    for r in sorted(across_seeds(rows), key=lambda r: r.get("radius") or 0.0):
        if r.get("attack") != "certified" or not _is_number(r.get("radius")):
            continue
        name = f"{r['category']} {r.get('detector') or 'patchguard'}"
        series = out[r["dataset"]].setdefault(
            name, {"radius": [], "certified": [], "attacked": [], "smoothed": []})
        series["radius"].append(float(r["radius"]))
        for side in ("certified", "attacked", "smoothed"):
            value = r.get(f"{side}_image_auroc")
            series[side].append(float(value) if _is_number(value) else float("nan"))
    return dict(out)


def certified_curves(rows: list[dict], out: Path) -> list[Path]:
    """OUT/certified_vs_radius_<dataset>.png: per model and category, the certified image
    AUROC (solid) and the attacked one (dashed) against the L2 radius, the bracket between
    them, and the smoothed detector's clean level (dotted line), one colour each."""
    paths = []
    for ds, named in sorted(certified_series(rows).items()):
        plt, (fig, ax) = _figure(figsize=(5.5, 3.8))
        colours = plt.get_cmap("tab10")
        for i, (name, s) in enumerate(sorted(named.items())):
            colour = colours(i % 10)
            ax.plot(s["radius"], s["certified"], "-", marker="o", color=colour,
                    label=f"{name} certified")
            ax.plot(s["radius"], s["attacked"], "--", marker="s", color=colour,
                    label=f"{name} attacked")
            ax.fill_between(s["radius"], s["certified"], s["attacked"], color=colour,
                            alpha=0.12)
            clean = [v for v in s["smoothed"] if np.isfinite(v)]
            if clean:
                ax.axhline(float(np.mean(clean)), color=colour, ls=":", lw=1.2,
                           label=f"{name} smoothed clean")
        ax.set_xlabel("L2 radius (norm on [0, 1] pixels at the model's input size)")
        ax.set_ylabel("image AUROC")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{ds}: certified (lower) and attacked (upper) bound of the smoothed"
                     " detector", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        paths.append(_save(fig, plt, Path(out) / CERTIFIED_CURVE.format(name=_file_name(ds))))
    return paths


def write_panels(outputs: dict[str, EvalOutputs], dataset, out_dir: Path, n: int) -> list[Path]:
    """PNG panels for the first n anomalous images: image, attacked image, perturbation,
    ground truth, clean map, attacked map (the strongest attack setting)."""
    from pgray.core.scoring import panel_indices

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


def parallel_coordinates(path: Path, names: list[str], trials: list[list], scores: list,
                         score_name: str) -> Path:
    """One line per trial across its searched parameters and, last, its score; each axis
    scaled to its own range (categorical values at evenly spaced places), the line coloured
    by the score. Trials without a score are grey."""
    plt, (fig, ax) = _figure(figsize=(max(4.0, 1.6 * (len(names) + 1)), 3.5))
    axes = [*names, score_name]
    columns = [[t[i] for t in trials] for i in range(len(names))] + [list(scores)]
    scaled, ticks = zip(*(_axis_scale(col) for col in columns)) if trials else ((), ())
    finite = [s for s in scores if _is_number(s)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    for j in range(len(trials)):
        ys = [col[j] for col in scaled]
        s = scores[j]
        color = cmap((s - low) / (high - low or 1.0)) if _is_number(s) else "0.7"
        ax.plot(range(len(axes)), ys, marker="o", color=color, alpha=0.85)
    for i, labels in enumerate(ticks):
        ax.axvline(i, color="0.6", lw=0.8)
        for y, text in labels:
            ax.text(i + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), axes, fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"searched parameters against {score_name}", fontsize=10)
    return _save(fig, plt, path)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _axis_scale(values: list) -> tuple[list[float], list[tuple[float, str]]]:
    """Values placed on [0, 1] and the axis's labels: numbers by their range (min and max
    labelled), anything else by its order of appearance."""
    if all(_is_number(v) or v is None for v in values) and any(_is_number(v) for v in values):
        nums = [float(v) for v in values if _is_number(v)]
        lo, hi = min(nums), max(nums)
        span = hi - lo or 1.0
        placed = [(float(v) - lo) / span if _is_number(v) else float("nan") for v in values]
        return placed, [(0.0, f"{lo:.4g}"), (1.0, f"{hi:.4g}")] if hi > lo else [(0.0,
                                                                                   f"{lo:.4g}")]
    levels = list(dict.fromkeys(str(v) for v in values))
    step = 1.0 / max(len(levels) - 1, 1)
    return ([levels.index(str(v)) * step for v in values],
            [(i * step, text) for i, text in enumerate(levels)])


# --- the sweep's rank agreement and front (pgray.pipelines.rank_eval) -----------------------
RANK_SCATTER = "rank_{name}.png"  # per target: proxy against test, clean and worst case
FRONT_PLOT = "front_{name}.png"  # per target: the trials' test numbers, front and pick
SCATTER_METRICS = (("clean_image_auroc", "clean image AUROC"),
                   ("worst_image_auroc", "worst-case image AUROC"))
FRONT_AXES = ((("clean_image_auroc", "clean AD (image AUROC)"),
               ("worst_image_auroc", "worst-case AD (image AUROC)")),
              (("worst_image_auroc", "worst-case AD (image AUROC)"),
               ("worst_pixel_auroc", "worst-case AL (pixel AUROC)")))


def _file_name(target: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", target)


def rank_scatters(result, out: Path) -> list[Path]:
    """OUT/rank_<target>.png: each evaluated trial's proxy value against its test value, for
    clean and worst-case image AUROC, with the target's Spearman and Kendall."""
    from pgray.tracking.rank_agreement import coefficient_text

    summary = result.rank_agreement
    targets = sorted({t for m, _ in SCATTER_METRICS for t in
                      (summary.get(m) or {}).get("pairs", {})})
    paths = []
    for target in targets:
        plt, (fig, axes) = _figure(1, len(SCATTER_METRICS), figsize=(9, 3.6))
        for ax, (metric, label) in zip(axes, SCATTER_METRICS):
            entry = summary.get(metric) or {}
            pairs = (entry.get("pairs") or {}).get(target, {})
            xs, ys = zip(*pairs.values()) if pairs else ((), ())
            ax.scatter(xs, ys, color="tab:blue")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")  # where proxy = test
            per = (entry.get("targets") or {}).get(target)
            said = ("" if per is None else f"Spearman {coefficient_text(per['spearman'])}\n"
                    f"Kendall {coefficient_text(per['kendall'])}, n {per['n']}")
            ax.set_title(f"{label}\n{said}", fontsize=8)
            ax.set_xlabel("proxy (held-out, evaluated epoch)", fontsize=8)
            ax.set_ylabel("test (short suite)", fontsize=8)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
        fig.suptitle(f"{target}: proxy against test per trial", fontsize=10, y=1.1)
        paths.append(_save(fig, plt, out / RANK_SCATTER.format(name=_file_name(target))))
    return paths


def front_plots(result, out: Path) -> list[Path]:
    """OUT/front_<target>.png: every evaluated trial's test numbers, clean AD against
    worst-case AD and worst-case AD against worst-case AL, the Pareto front of each pair
    joined, the picked trial starred and the recipe baseline's point beside them."""
    from pgray.tracking.trials import pareto_front

    paths = []
    for target, entry in sorted(result.front.items()):
        trials = entry["trials"]
        ids = sorted(trials)
        plt, (fig, axes) = _figure(1, len(FRONT_AXES), figsize=(9, 3.8))
        for ax, ((xk, xl), (yk, yl)) in zip(axes, FRONT_AXES):
            points = [[trials[i][xk], trials[i][yk]] for i in ids]
            ax.scatter([p[0] for p in points], [p[1] for p in points], color="0.55",
                       label="trials")
            front = sorted((points[i] for i in pareto_front(points)), key=lambda p: p[0])
            ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:blue",
                    marker="o", label="front")
            if entry.get("picked") in trials:
                picked = trials[entry["picked"]]
                ax.scatter([picked[xk]], [picked[yk]], marker="*", s=220, color="tab:orange",
                           edgecolor="k", zorder=3, label="picked")
            if entry.get("recipe"):
                recipe = entry["recipe"]
                ax.scatter([recipe[xk]], [recipe[yk]], marker="X", s=120, color="tab:red",
                           zorder=3, label="recipe")
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7)
        fig.suptitle(f"{target}: the trials on the test split (short suite)", fontsize=10,
                     y=1.02)
        paths.append(_save(fig, plt, out / FRONT_PLOT.format(name=_file_name(target))))
    return paths
