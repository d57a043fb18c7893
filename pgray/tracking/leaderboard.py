"""The leaderboard: robustness cards (`pgray.tracking.cards`) of many runs merged into one
Markdown table and one self-contained HTML table, comparing like with like:

- Groups: dataset, category, threat, budget, the suite (its name and its members' steps,
  restarts and queries) and the attacks' precision. Lines are ranked only within their group,
  so a `--suite protocol` card (the paper's PGD alone) never ranks beside the worst case of
  the adaptive suite: its line says `protocol`; a card whose suite is not known (rows or
  cards written before cards recorded it) says `unknown`, apart from both.
- Reliable lines rank first, best worst-case AD (image AUROC) first; unreliable ones (a check
  flagged them) after all reliable ones, marked, with their flags.
- One line per model over its seeds (`pgray.tracking.board_lines` says what makes a model):
  the mean over the seeds and an interval over both the test images and the seeds
  (`pgray.core.intervals.across_seeds`), clipped to [0, 100], and the seed count.
- Beside the worst case, the certified AD where the card certified its L2 budget (randomized
  smoothing: a lower bound for the smoothed detector, not for the model itself; blank where
  none).
- Beside AD, AL and AUPRO: the operating points of the worst case (TPR at 1 % and 5 % FPR)
  and its AD when only normal or only anomalous images are attacked; the real budget at the
  model's input size (patch area, L2 per pixel); the commit the rows were computed with.

Intervals are shown as "87.2 [84.1, 90.0]". Plain Python and numpy: no heavy import, so
`python -m pgray.leaderboard --help` stays fast."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pgray.core.intervals import SeedSummary
from pgray.errors import PgrayError
from pgray.tracking.board_lines import Line, lines_of, suite_key
from pgray.tracking.cards import is_card

UNRELIABLE = "UNRELIABLE"
COLUMNS = ("dataset", "category", "threat", "budget", "real budget", "suite", "precision",
           "rank", "model", "training", "seeds", "clean AD", "protocol AD", "worst AD",
           "certified AD", "worst AL", "worst AUPRO", "worst TPR@1%FPR", "worst TPR@5%FPR",
           "worst AD normals attacked", "worst AD anomalous attacked", "paper AD",
           "forward passes", "commit", "reliability")
# (card block, metric) of each number column, in COLUMNS' order
NUMBERS = (("clean", "image_auroc"), ("protocol", "image_auroc"), ("worst_case", "image_auroc"),
           ("certified", "image_auroc"), ("worst_case", "pixel_auroc"), ("worst_case", "aupro"),
           ("worst_case", "tpr_at_fpr1"), ("worst_case", "tpr_at_fpr5"),
           ("worst_case", "image_auroc_attack_normal"),
           ("worst_case", "image_auroc_attack_anomalous"))


class LeaderboardError(PgrayError):
    """A folder to read does not exist or holds no card."""


def find_cards(folders: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every card (*.json with the card schema) under each folder, each folder required to
    exist and to hold at least one; cards met twice (the same file through two folders)
    count once."""
    cards, seen = [], set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise LeaderboardError(f"{folder}: no such folder")
        found = 0
        for path in sorted(folder.rglob("*.json")):
            card = _read_card(path)
            if card is None:
                continue
            found += 1
            if path.resolve() not in seen:
                seen.add(path.resolve())
                cards.append(card)
        if not found:
            raise LeaderboardError(f"{folder}: no robustness card (*.json with schema"
                                   " pgray.robustness_card) under it; a benchmark writes them"
                                   " to OUT/cards/")
    return cards


def _read_card(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # not ours: other JSON files (metrics.json, summaries) sit beside cards
    return data if is_card(data) else None


def interval(metric: Mapping[str, Any] | SeedSummary | None) -> str:
    """'87.2 [84.1, 90.0]' (percent), '87.2' without an interval, '–' without a value; a
    metric is a card's `{value, ci_low, ci_high}` or a summary over seeds."""
    if isinstance(metric, SeedSummary):
        value, low, high = metric.mean, metric.low, metric.high
    else:
        metric = metric or {}
        value, low, high = (metric.get(k) for k in ("value", "ci_low", "ci_high"))
    if _value(value) is None:
        return "–"
    text = f"{100 * value:.1f}"
    if _value(low) is None or _value(high) is None:
        return text
    return f"{text} [{100 * low:.1f}, {100 * high:.1f}]"


def _value(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _training(card: Mapping[str, Any]) -> str:
    t = card.get("training") or {}
    method = t.get("method") or "unknown"
    if method != "adversarial":
        return method
    eps = t.get("eps")
    return f"adversarial {t.get('attack')} eps {eps:g} x{t.get('steps')}" if eps is not None \
        else f"adversarial {t.get('attack')}"


def _model(line: Line) -> str:
    model = line.card.get("model") or {}
    sha = (model.get("checkpoint_sha256") or "")[:8] if len(line.cards) == 1 else ""
    return (f"{line.card['detector']} ({model.get('backbone')},"
            f" {model.get('backbone_weights')})" + (f" {sha}" if sha else ""))


def _seeds(line: Line) -> str:
    """'3 (0, 1, 2)': the seeds whose worst case has a value, and how many have none."""
    have = [s for s, c, b in zip(line.seeds, line.cards, line.budgets)
            if _value((((b or {}).get("worst_case") or {}).get("image_auroc") or {})
                      .get("value")) is not None]
    if line.budget is None or not have:
        have = line.seeds
    named = ", ".join("?" if s is None else str(s) for s in have)
    missing = len(line.cards) - len(have)
    return f"{len(have)} ({named})" + (f", {missing} without a worst case" if missing else "")


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _real_budget(line: Line) -> str:
    """The budget at the model's input size: the patch's real area, the L2 budget per pixel."""
    areas = _distinct((b or {}).get("patch_area") for b in line.budgets)
    per_pixel = _distinct((b or {}).get("l2_per_pixel") for b in line.budgets)
    texts = ([f"{100 * a:.2f} % area" for a in areas]
             + [f"{p:.2g} per pixel" for p in per_pixel])
    return ", ".join(texts) or "–"


def _commit(line: Line) -> str:
    """The rows' commits, short; '?' where rows did not record it."""
    commits = [c for card in line.cards for c in (card.get("git_commits")
                                                  or [card.get("git_commit")])]
    return ", ".join(_distinct(c[:8] if c else "?" for c in commits)) or "?"


def _reliability(line: Line) -> str:
    if not line.unreliable:
        return "ok"
    flags = sorted({f for c in line.cards for f in c.get("flags") or []})
    return f"{UNRELIABLE}: {', '.join(flags)}"


def _reported(card: Mapping[str, Any]) -> str:
    value = (card.get("reported") or {}).get("image_auroc")
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def _passes(line: Line) -> str:
    spent = _distinct((b or {}).get("forward_passes") for b in line.budgets)
    return "–" if not spent else " / ".join(f"{p:,}" for p in sorted(spent))


class SuiteNames:
    """Short names of the suites met: the suite's name, and a letter where one name covers
    several member settings (`adaptive A`, `adaptive B`); `legend` describes each."""

    def __init__(self, lines: list[Line]):
        keys = _distinct(suite_key(ln.budget) for ln in lines if ln.budget is not None)
        self.names: dict[tuple, str] = {}
        for name in _distinct(k[0] for k in keys):
            mine = [k for k in keys if k[0] == name]
            for i, key in enumerate(mine):
                self.names[key] = name if len(mine) == 1 else f"{name} {chr(65 + i % 26)}"

    def __call__(self, budget: Mapping[str, Any] | None) -> str:
        return "–" if budget is None else self.names[suite_key(budget)]

    def legend(self) -> list[str]:
        out = []
        for key, label in self.names.items():
            members = key[1]
            if members is None:
                what = "members not recorded"
            else:
                what = "; ".join(_member_text(m) for m in members)
            out.append(f"{label}: {what}")
        return out


def _member_text(member: tuple) -> str:
    name, steps, restarts, queries = member
    if queries:
        return f"{name} {queries:,} queries"
    return f"{name} {steps} steps x {restarts} restarts"


def cells(line: Line, rank: int, suite: SuiteNames | None = None) -> list[str]:
    card, budget = line.card, line.budget or {}
    eps = budget.get("eps")
    suite = suite or SuiteNames([line])
    return [card["data"]["dataset"], card["data"]["category"], card["threat"],
            "clean only" if eps is None else f"{eps:g}", _real_budget(line),
            suite(line.budget), budget.get("precision") or ("–" if eps is None else "?"),
            str(rank), _model(line), _training(card), _seeds(line),
            *(interval(line.summary(block, metric)) for block, metric in NUMBERS),
            _reported(card), _passes(line), _commit(line), _reliability(line)]


def ranked(cards: Iterable[Mapping[str, Any]]) -> tuple[list[list[str]], SuiteNames]:
    """Each line's cells, ranked 1, 2, ... within its group (unreliable lines after the
    reliable ones), and the suites' names."""
    lines = lines_of(cards)
    suite = SuiteNames(lines)
    out, previous, rank = [], None, 0
    for line in lines:
        rank = rank + 1 if line.group == previous else 1
        previous = line.group
        out.append(cells(line, rank, suite))
    return out, suite


INTRO = ("Per dataset / category / threat / budget / suite / precision, the reliable lines"
         " first, best worst-case AD first; then the unreliable ones (a reliability check"
         " flagged them), marked. Only lines of one suite are ranked together: a `protocol`"
         " line is the paper's PGD alone, not the worst case of the adaptive suite, and"
         " `unknown` is a suite the card did not record. One line per model over its seeds:"
         " the mean, and in brackets a 95 % interval over both the test images and the seeds"
         " (clipped to [0, 100]); a single seed's is its bootstrap interval. Percent. Normals"
         " / anomalous attacked: the worst case's AD when only those images are attacked."
         " Certified AD: at an L2 budget the model was certified at, the smoothed detector's"
         " certified lower bound (randomized smoothing; its own detector, not the one ranked;"
         " blank where none).")


def _md(text: str) -> str:
    """A Markdown table cell: pipes escaped, no line breaks, no HTML."""
    return (html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")
            .replace("\r", " "))


def markdown(cards: Iterable[Mapping[str, Any]]) -> str:
    rows, suites = ranked(cards)
    lines = ["# pgray leaderboard", "", INTRO, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells_ = [_md(c) for c in row]
        if row[-1].startswith(UNRELIABLE):
            cells_[-1] = f"**{cells_[-1]}**"
        lines.append("| " + " | ".join(cells_) + " |")
    legend = suites.legend()
    if legend:
        lines += ["", "Suites:", "", *(f"- {_md(text)}" for text in legend)]
    return "\n".join(lines) + "\n"


STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "tr.unreliable td{background:#fde8e8}td.flag{color:#a00;font-weight:bold}")


def html_page(cards: Iterable[Mapping[str, Any]]) -> str:
    """One self-contained page (inline style, no script, nothing fetched); every string
    escaped."""
    rows, suites = ranked(cards)
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           "<title>pgray leaderboard</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>pgray leaderboard</h1>", f"<p>{esc(INTRO)}</p>",
           "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
           + "</tr></thead><tbody>"]
    for row in rows:
        bad = row[-1].startswith(UNRELIABLE)
        tds = [f"<td>{esc(c)}</td>" for c in row[:-1]]
        tds.append(f"<td class=\"flag\">{esc(row[-1])}</td>" if bad else
                   f"<td>{esc(row[-1])}</td>")
        out.append(("<tr class=\"unreliable\">" if bad else "<tr>") + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    legend = suites.legend()
    if legend:
        out.append("<p>Suites:</p><ul>" + "".join(f"<li>{esc(t)}</li>" for t in legend)
                   + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_leaderboard(cards: list[Mapping[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """OUT.md and OUT.html (OUT's own suffix, if any, replaced), written atomically."""
    from pgray.io import write_text

    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".md", ".html") else out
    return (write_text(base.with_name(base.name + ".md"), markdown(cards)),
            write_text(base.with_name(base.name + ".html"), html_page(cards)))
