"""The leaderboard: robustness cards (`pgray.tracking.cards`) of many runs merged into one
Markdown table and one self-contained HTML table. One line per card and budget, grouped by
dataset, category, threat and budget, best worst-case AD (image AUROC) first; intervals shown
as "87.2 [84.1, 90.0]"; an unreliable card is marked and its flags listed. Plain Python: no
heavy import, so `python -m pgray.leaderboard --help` stays fast."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.errors import PgrayError
from pgray.tracking.cards import is_card

UNRELIABLE = "UNRELIABLE"
COLUMNS = ("dataset", "category", "threat", "budget", "rank", "model", "training", "clean AD",
           "protocol AD", "worst AD", "worst AL", "worst AUPRO", "paper AD", "forward passes",
           "reliability")


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


@dataclass(frozen=True)
class Line:
    """One card at one budget (a clean-only card: budget None)."""

    card: Mapping[str, Any]
    budget: Mapping[str, Any] | None

    @property
    def group(self) -> tuple:
        data = self.card["data"]
        return (data["dataset"], data["category"], self.card["threat"],
                -1.0 if self.budget is None else float(self.budget["eps"]))

    @property
    def worst_ad(self) -> float | None:
        worst = (self.budget or {}).get("worst_case") or {}
        return _value(worst.get("image_auroc"))


def _value(metric: Mapping[str, Any] | None) -> float | None:
    value = (metric or {}).get("value")
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def lines_of(cards: Iterable[Mapping[str, Any]]) -> list[Line]:
    """Lines grouped by (dataset, category, threat, budget), best worst-case AD first in each
    group (a missing number last), then by name for a stable order."""
    lines = [Line(c, b) for c in cards for b in (c.get("robust") or [None])]
    return sorted(lines, key=lambda ln: (ln.group, ln.worst_ad is None, -(ln.worst_ad or 0.0),
                                         ln.card["name"]))


def interval(metric: Mapping[str, Any] | None) -> str:
    """'87.2 [84.1, 90.0]' (percent), '87.2' without an interval, '–' without a value."""
    value = _value(metric)
    if value is None:
        return "–"
    low, high = _value({"value": (metric or {}).get("ci_low")}), _value(
        {"value": (metric or {}).get("ci_high")})
    text = f"{100 * value:.1f}"
    return text if low is None or high is None else f"{text} [{100 * low:.1f}, {100 * high:.1f}]"


def _training(card: Mapping[str, Any]) -> str:
    t = card.get("training") or {}
    method = t.get("method") or "unknown"
    if method != "adversarial":
        return method
    eps = t.get("eps")
    return f"adversarial {t.get('attack')} eps {eps:g} x{t.get('steps')}" if eps is not None \
        else f"adversarial {t.get('attack')}"


def _model(card: Mapping[str, Any]) -> str:
    model = card.get("model") or {}
    sha = (model.get("checkpoint_sha256") or "")[:8]
    return f"{card['detector']} ({model.get('backbone')}, {model.get('backbone_weights')})" + (
        f" {sha}" if sha else "")


def _reliability(card: Mapping[str, Any]) -> str:
    if not card.get("unreliable"):
        return "ok"
    return f"{UNRELIABLE}: {', '.join(card.get('flags') or [])}"


def _reported(card: Mapping[str, Any]) -> str:
    value = (card.get("reported") or {}).get("image_auroc")
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def cells(line: Line, rank: int) -> list[str]:
    card, budget = line.card, line.budget or {}
    clean = card.get("clean") or {}
    protocol = budget.get("protocol") or {}
    worst = budget.get("worst_case") or {}
    eps = budget.get("eps")
    passes = budget.get("forward_passes")
    return [card["data"]["dataset"], card["data"]["category"], card["threat"],
            "clean only" if eps is None else f"{eps:g}", str(rank), _model(card),
            _training(card), interval(clean.get("image_auroc")),
            interval(protocol.get("image_auroc")), interval(worst.get("image_auroc")),
            interval(worst.get("pixel_auroc")), interval(worst.get("aupro")), _reported(card),
            "–" if passes is None else f"{passes:,}", _reliability(card)]


def ranked(cards: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """Each line's cells, ranked 1, 2, ... within its group."""
    out, previous, rank = [], None, 0
    for line in lines_of(cards):
        rank = rank + 1 if line.group == previous else 1
        previous = line.group
        out.append(cells(line, rank))
    return out


def _md(text: str) -> str:
    """A Markdown table cell: pipes escaped, no line breaks, no HTML."""
    return (html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")
            .replace("\r", " "))


def markdown(cards: Iterable[Mapping[str, Any]]) -> str:
    rows = ranked(cards)
    lines = ["# pgray leaderboard", "",
             "Worst case of the adaptive suite per budget (the robust number), best first in"
             " each dataset / category / threat / budget; percent, 95 % bootstrap interval in"
             " brackets where measured. UNRELIABLE: a reliability check flagged the card.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells_ = [_md(c) for c in row]
        if row[-1].startswith(UNRELIABLE):
            cells_[-1] = f"**{cells_[-1]}**"
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "tr.unreliable td{background:#fde8e8}td.flag{color:#a00;font-weight:bold}")


def html_page(cards: Iterable[Mapping[str, Any]]) -> str:
    """One self-contained page (inline style, no script, nothing fetched); every string
    escaped."""
    rows = ranked(cards)
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           "<title>pgray leaderboard</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>pgray leaderboard</h1>",
           "<p>Worst case of the adaptive suite per budget (the robust number), best first in"
           " each dataset / category / threat / budget; percent, 95 % bootstrap interval in"
           " brackets where measured. UNRELIABLE: a reliability check flagged the card.</p>",
           "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
           + "</tr></thead><tbody>"]
    for row in rows:
        bad = row[-1].startswith(UNRELIABLE)
        tds = [f"<td>{esc(c)}</td>" for c in row[:-1]]
        tds.append(f"<td class=\"flag\">{esc(row[-1])}</td>" if bad else
                   f"<td>{esc(row[-1])}</td>")
        out.append(("<tr class=\"unreliable\">" if bad else "<tr>") + "".join(tds) + "</tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"


def write_leaderboard(cards: list[Mapping[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """OUT.md and OUT.html (OUT's own suffix, if any, replaced), written atomically."""
    from pgray.io import write_text

    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".md", ".html") else out
    return (write_text(base.with_name(base.name + ".md"), markdown(cards)),
            write_text(base.with_name(base.name + ".html"), html_page(cards)))
