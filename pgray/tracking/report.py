"""OUT/report.html: one self-contained page per benchmark or sweep (no network: CSS inline,
images as base64 PNG, every string escaped). `render_report` turns a `ReportData` into the
HTML; the `*_report_data` functions gather it from a run's rows and files; `write_report`
writes it atomically."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgray.config.benchmark import BenchmarkConfig

REPORT_FILE = "report.html"
CURVES = "auroc_vs_eps*.png"  # one per threat (pgray.tracking.plots.robustness_curves)
# the certified bracket against the radius, one per dataset (plots.certified_curves)
CERTIFIED_CURVES = "certified_vs_radius_*.png"
PANELS_DIR = "panels"  # the benchmark's panel PNGs, one folder per job (BenchmarkRun)
MAX_PANELS = 24  # a page a person scrolls, not every panel of a large grid
# Section ids a test (or a person's link) can find; the sweep-only ones are left out of a
# benchmark's page.
SECTIONS = ("results", "trials", "proxy-gap", "rank-agreement", "front", "flags", "panels",
            "run")


@dataclass
class Image:
    caption: str
    png: bytes


@dataclass
class Table:
    title: str
    head: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class ReportData:
    title: str
    config_name: str  # the YAML the run wrote (or the benchmark's config)
    config_text: str
    eps: list[float]
    suite: str
    threats: list[str]
    hardware: dict[str, str]
    results: list[Table]
    curves: list[Image]
    panels: list[Image]
    flags: list[tuple[str, str, list[str]]]  # name, what it means, where it was raised
    sweep: bool = False
    trials: Table | None = None
    trials_plot: Image | None = None
    proxy_gap: Table | None = None
    rank_agreement: Table | None = None  # proxy vs test over the trials (a sweep)
    rank_images: list[Image] = field(default_factory=list)  # its scatter per target
    front_images: list[Image] = field(default_factory=list)  # the trials' front per target
    links: dict[str, str] = field(default_factory=dict)  # label -> where (path or URL)
    # what the page says first when jobs failed (pgray.tracking.tables.incomplete_note)
    incomplete: str = ""


# --- HTML ---------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 80em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; } th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em;
      max-height: 30em; }
figure { margin: 0.6em 0 1.2em; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; } dt { font-weight: bold; margin-top: 0.5em; }
dd { overflow-wrap: anywhere; }
.note { font-size: 0.85em; color: #555; } .flag { color: #a40; }
.incomplete { border: 2px solid #a40; padding: 0.5em 0.8em; color: #a40; }
"""
# Each image's decoded size written into the page (local, no network): what a browser test
# reads back to know every image decoded.
SIZES_SCRIPT = """addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.naturalSize = img.naturalWidth + "x" + img.naturalHeight;
  }
  document.body.dataset.loaded = "yes";
});"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(image.caption)}">'
            f"<figcaption>{_e(image.caption)}</figcaption></figure>")


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.head)
    body = "".join(
        f'<tr{" class=mean" if cells and cells[0].startswith("mean") else ""}>'
        + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>" for cells in table.rows)
    note = f'<p class="note">{_e(table.note)}</p>' if table.note else ""
    return (f"<h3>{_e(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _run_section(data: ReportData) -> str:
    facts = [("eps", ", ".join(f"{e:g}" for e in data.eps)), ("suite", data.suite),
             ("threats", ", ".join(data.threats)), *data.hardware.items(),
             *data.links.items()]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return _section("run", "What was run", f"<dl>{items}</dl><h3>{_e(data.config_name)}</h3>"
                                           f"<pre>{_e(data.config_text)}</pre>")


def _trials_section(data: ReportData) -> str:
    parts = [_table(data.trials)] if data.trials else ["<p>No trials.</p>"]
    if data.trials_plot:
        parts.append(_img(data.trials_plot))
    return _section("trials", "The trials", "".join(parts))


def _results_section(data: ReportData) -> str:
    parts = [_table(t) for t in data.results] or ["<p>No results.</p>"]
    parts += [_img(c) for c in data.curves]
    return _section("results", "Results: clean, protocol and worst-case AD, AL, AUPRO",
                    "".join(parts))


def _rank_body(data: ReportData) -> str:
    if data.rank_agreement is None:
        return "<p>Not measured (final_eval.rank_agreement.enabled is off).</p>"
    return _table(data.rank_agreement) + "".join(_img(i) for i in data.rank_images)


def _flags_section(data: ReportData) -> str:
    if not data.flags:
        return _section("flags", "Flags raised", "<p>None: no reliability check tripped.</p>")
    items = "".join(
        f'<dt class="flag">{_e(name)}</dt><dd>{_e(meaning)}<ul>'
        + "".join(f"<li>{_e(w)}</li>" for w in where) + "</ul></dd>"
        for name, meaning, where in data.flags)
    return _section("flags", "Flags raised", f"<dl>{items}</dl>")


def render_report(data: ReportData) -> str:
    """The whole page, what a reader looks for first on top: the results, the trials and the
    proxy-to-test gap (a sweep), the flags, the panels, then what was run in full."""
    sections = [_results_section(data)]
    if data.sweep:
        sections.append(_trials_section(data))
        body = _table(data.proxy_gap) if data.proxy_gap else "<p>No trial was evaluated.</p>"
        sections.append(_section("proxy-gap", "The proxy against the test split", body))
        sections.append(_section("rank-agreement", "Rank agreement: proxy vs test",
                                 _rank_body(data)))
        front = "".join(_img(i) for i in data.front_images) or (
            "<p>No trial was evaluated on the test split (final_eval.rank_agreement).</p>")
        sections.append(_section("front", "The trials' front on the test split", front))
    sections.append(_flags_section(data))
    panels = "".join(_img(p) for p in data.panels) or "<p>No panels were written.</p>"
    sections.append(_section("panels", "Attacked images and their anomaly maps", panels))
    sections.append(_run_section(data))
    hardware = ", ".join(f"{k} {v}" for k, v in data.hardware.items())
    if data.incomplete:
        summary = f'<p class="incomplete" id="incomplete">{_e(data.incomplete)}</p>'
    else:
        summary = ""
    summary += (f'<p class="note">eps {", ".join(f"{e:g}" for e in data.eps)}/255;'
               f" {_e(data.suite)}; {_e(hardware)}. The worst case of the suite is the robust"
               " number.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(data.title)}</title><style>{CSS}</style>"
            f"<script>{SIZES_SCRIPT}</script></head>"
            f"<body><h1>{_e(data.title)}</h1>{summary}{''.join(sections)}</body></html>\n")


def write_report(data: ReportData, out: Path) -> Path:
    from pgray.io import write_text

    return write_text(Path(out) / REPORT_FILE, render_report(data))


# --- gathering the data ---------------------------------------------------------------------
def hardware() -> dict[str, str]:
    import os

    import torch

    import pgray
    from pgray.core.eval_version import EVAL_VERSION, git_commit

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"CPUs": str(os.cpu_count()), "GPUs": ", ".join(gpus) or "none",
            "torch": torch.__version__, "pgray": pgray.__version__,
            "evaluation version": str(EVAL_VERSION), "commit": git_commit() or "unknown"}


def result_tables(rows: list[dict[str, Any]], prefix: str = "") -> list[Table]:
    """results.md's per-budget tables as data (pgray.tracking.tables), intervals in cells,
    each followed by its operating points where the rows carry them; `prefix` names the
    benchmark the rows come from where a page shows several."""
    from pgray.tracking import tables
    from pgray.tracking.certified import CERTIFIED_NOTE
    from pgray.tracking.table_columns import OPERATING_NOTE

    out = []
    for ds, det, threat, eps, mine in tables.result_budgets(rows):
        head, body = tables.budget_table(mine, eps, threat)
        seeds = max((r.get("n_seeds") or 1 for r in mine), default=1)
        note = tables.UNCERTAINTY_NOTE if seeds == 1 else tables.SEEDS_NOTE.format(n=seeds)
        title = f"{prefix}{ds}, {det} ({tables.budget_title(mine, eps, threat)})"
        out.append(Table(title, head, body, note))
        points = tables.operating_table(mine, eps, threat)
        if points is not None:
            out.append(Table(f"{prefix}{ds}, {det} ({tables.budget_label(threat, eps)}):"
                             " operating points", *points, OPERATING_NOTE))
    for ds, label, head, body, settings in tables.certified_tables(rows):
        out.append(Table(f"{prefix}{ds}: certified {label} by randomized smoothing,"
                         " bracketed", head, body, f"Smoothing: {settings}. {CERTIFIED_NOTE}"))
    return out


def curve_images(folder: Path) -> list[Image]:
    """A results folder's figures: AUROC against eps per threat, the certified bracket
    against the radius per dataset."""
    return folder_images(folder, CURVES) + folder_images(folder, CERTIFIED_CURVES)


def raised_flags(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """Each flag any row carries, what it means (pgray.attacks.checks) and where it was
    raised, with the numbers that raised it."""
    from pgray.attacks.checks import FLAG_MEANINGS

    where: dict[str, list[str]] = {}
    for r in rows:
        for note in r.get("flag_notes") or []:
            name, _, numbers = str(note).partition(": ")
            place = (f"{r.get('dataset')}/{r.get('category')} {r.get('detector') or ''}"
                     f" {r.get('attack')} {r.get('threat') or 'linf'} eps {r.get('eps')}:"
                     f" {numbers}").replace("  ", " ")
            where.setdefault(name, [])
            if place not in where[name]:
                where[name].append(place)
    return [(name, FLAG_MEANINGS.get(name, ""), places) for name, places in sorted(where.items())]


def folder_images(folder: Path, pattern: str, limit: int = MAX_PANELS) -> list[Image]:
    paths = sorted(Path(folder).glob(pattern))[:limit]
    return [Image(str(p.relative_to(folder).with_suffix("")), p.read_bytes()) for p in paths]


def benchmark_report_data(cfg: BenchmarkConfig, out: Path, rows: list[dict[str, Any]]
                          ) -> ReportData:
    import yaml

    from pgray.config.base import to_dict

    suite = cfg.suite
    suite_text = (f"adaptive (members at {suite.steps} steps x {suite.restarts} restarts)"
                  if suite.name == "adaptive" else "protocol") + (
        f" beside the protocol PGD-{max(cfg.steps)}")
    return ReportData(
        title=f"Benchmark {cfg.name}", config_name="benchmark config",
        config_text=yaml.safe_dump(to_dict(cfg), sort_keys=False),
        eps=list(cfg.eps), suite=suite_text, threats=threat_texts(cfg.threats, cfg.certify),
        hardware=hardware(), results=result_tables(rows),
        curves=curve_images(out),
        panels=folder_images(out, f"{PANELS_DIR}/*/*.png"), flags=raised_flags(rows),
        links={"results": str(out)})


def threat_texts(threats: list, certify=None) -> list[str]:
    """The threats a run attacked in, and the radii it certified (`certify`: a
    CertifyConfig, or None)."""
    out = ["linf (eps in 1/255)"] + [f"{t.threat} (eps {', '.join(f'{e:g}' for e in t.eps)})"
                                     for t in threats]
    if certify is not None:
        out.append(f"certified l2 (radii {', '.join(f'{r:g}' for r in certify.radii)};"
                   f" sigma {certify.sigma:g}, {certify.samples} samples, confidence"
                   f" {certify.confidence:g})")
    return out


def sweep_report_data(space, result, out: Path) -> ReportData:
    """The sweep's page: its search space, trials, and the final evaluation's benchmarks
    (rows, curves and panels of each)."""
    from pgray.tracking.plots import FRONT_PLOT, RANK_SCATTER
    from pgray.tracking.sweep_report import (
        PROXY_GAP_HEAD,
        PROXY_GAP_TITLE,
        attack_text,
        proxy_gap_rows,
        trials_rows,
    )

    rows = [r for b in result.benchmarks for r in b.rows]
    folders = [Path(b.parquet).parent for b in result.benchmarks]
    head, trial_cells = trials_rows(space, result.trials, {
        t.trial_id for ranked in result.best.values() for t in ranked})
    # each benchmark (top1, top2, ...) on its own: one's seeds never merge with another's rows
    many = len(result.benchmarks) > 1
    results = [t for b, f in zip(result.benchmarks, folders)
               for t in result_tables(b.rows, f"{f.name}: " if many else "")]
    gaps = [cells for b, f in zip(result.benchmarks, folders) if b.proxies
            for cells in proxy_gap_rows(b.proxies, b.rows, f.name if many else "")[1]]
    config = out / "search_space.yaml"
    return ReportData(
        title=f"Sweep {space.name}", config_name=config.name,
        config_text=config.read_text() if config.is_file() else "",
        eps=list(space.final_eval.eps), suite=attack_text(space),
        threats=threat_texts(space.fixed_config().eval.threats,
                             space.fixed_config().eval.certify), hardware=hardware(),
        results=results,
        curves=[i for f in folders for i in curve_images(f)],
        panels=[i for f in folders for i in folder_images(f, f"{PANELS_DIR}/*/*.png")][
            :MAX_PANELS],
        flags=raised_flags(rows), sweep=True,
        trials=Table(f"{len(result.trials)} trials", head, trial_cells),
        trials_plot=trials_plot(space, result.trials, out),
        proxy_gap=Table(PROXY_GAP_TITLE, PROXY_GAP_HEAD, gaps) if gaps else None,
        rank_agreement=rank_table(result.rank_agreement),
        rank_images=folder_images(out, RANK_SCATTER.format(name="*")),
        front_images=folder_images(out, FRONT_PLOT.format(name="*")),
        links={"results": str(out)} | dict(sorted(result.compare_links.items())),
        incomplete=" ".join(b.incomplete for b in result.benchmarks if b.incomplete))


def rank_table(summary: dict[str, Any]) -> Table | None:
    from pgray.tracking.rank_agreement import (
        AGREEMENT_HEAD,
        AGREEMENT_NOTE,
        agreement_rows,
        source_text,
    )

    if not summary:
        return None
    return Table("Spearman and Kendall of proxy and test over the trials", AGREEMENT_HEAD,
                 agreement_rows(summary), f"{AGREEMENT_NOTE} {source_text(summary)}.")


def trials_plot(space, trials, out: Path) -> Image | None:
    """The parallel-coordinates PNG of the searched parameters against the first
    objective (OUT/trials_parallel.png)."""
    from pgray.tracking.plots import parallel_coordinates

    names = list(space.search)
    if not trials or not names:
        return None
    score = space.objectives[0].metric
    path = parallel_coordinates(out / "trials_parallel.png", names,
                                [[t.params.get(k) for k in names] for t in trials],
                                [t.scores.get(score) for t in trials], score)
    return Image("searched parameters against the objective", path.read_bytes())
