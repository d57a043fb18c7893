"""The leaderboard's lines: which cards are one model over its seeds, and which lines are
ranked together (`pgray.tracking.leaderboard` draws them).

- Groups: dataset, category, threat, budget, the suite (its name and its members' steps,
  restarts and queries) and the attacks' precision. Lines are ranked only within their group;
  in it, reliable lines first, best worst-case AD (image AUROC) first.
- A model is its detector, backbone and the weights the backbone started from, its training
  (method, attack, eps, steps) and its test data (split, mask rule, data fingerprint): cards
  that agree on all of that and differ only by seed are one model's seeds, one line. A card
  without a seed, or one whose seed repeats in its model (two trainings the cards cannot tell
  apart), stands alone. The cards do not record the rest of a training config (learning
  rate, epochs...): two configs that differ only there and share seeds stand alone too, since
  their seeds repeat.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pgray.core.intervals import SeedSummary, across_seeds
from pgray.tracking.cards import ADAPTIVE, PROTOCOL, UNKNOWN

SUITE_ORDER = {ADAPTIVE: 0, PROTOCOL: 2, UNKNOWN: 3}  # other names: 1


def upgraded(card: Mapping[str, Any]) -> dict[str, Any]:
    """A card in the current schema's shape. Version 1 cards recorded no suite, precision or
    row commit (their `git_commit` was the writer's): those read as unknown."""
    card = dict(card)
    if (card.get("schema_version") or 1) < 2:
        card["written_by_commit"], card["git_commit"] = card.get("git_commit"), None
        card["robust"] = [dict(b) | {"suite": {"name": UNKNOWN, "members": None},
                                     "precision": None} for b in card.get("robust") or []]
    return card


def suite_key(budget: Mapping[str, Any] | None) -> tuple:
    """What makes two budgets' suites alike: the name and each member's name, steps,
    restarts and queries (members unknown: the name alone)."""
    suite = (budget or {}).get("suite") or {}
    members = suite.get("members")
    described = None if members is None else tuple(
        (m.get("name"), m.get("steps"), m.get("restarts"), m.get("queries")) for m in members)
    return (suite.get("name") or UNKNOWN, described)


def model_key(card: Mapping[str, Any]) -> tuple:
    """A model's identity over its seeds (the module's docstring says why these fields)."""
    model, training, data = (card.get(k) or {} for k in ("model", "training", "data"))
    return (card.get("detector"), model.get("backbone"), model.get("backbone_weights"),
            training.get("method"), training.get("attack"), training.get("eps"),
            training.get("steps"), data.get("split"), data.get("mask_resize"),
            data.get("fingerprint"))


@dataclass(frozen=True)
class Line:
    """One model at one budget, over its seeds: each seed's card and its budget there (a
    clean-only card: budget None)."""

    cards: tuple[Mapping[str, Any], ...]
    budgets: tuple[Mapping[str, Any] | None, ...]

    @property
    def card(self) -> Mapping[str, Any]:
        return self.cards[0]

    @property
    def budget(self) -> Mapping[str, Any] | None:
        return self.budgets[0]

    @property
    def group(self) -> tuple:
        data, budget = self.card["data"], self.budget or {}
        suite = suite_key(self.budget)
        return (data["dataset"], data["category"], self.card["threat"],
                -1.0 if self.budget is None else float(budget["eps"]),
                SUITE_ORDER.get(suite[0], 1), json.dumps(suite), budget.get("precision") or "")

    @property
    def unreliable(self) -> bool:
        return any(c.get("unreliable") for c in self.cards)

    @property
    def seeds(self) -> list[int | None]:
        return [(c.get("model") or {}).get("seed") for c in self.cards]

    def summary(self, block: str, metric: str) -> SeedSummary:
        """The metric's mean over the seeds and its interval over test images and seeds."""
        found = [(_block(c, b, block) or {}).get(metric) or {}
                 for c, b in zip(self.cards, self.budgets)]
        return across_seeds([m.get("value") for m in found], [m.get("ci_low") for m in found],
                            [m.get("ci_high") for m in found])

    @property
    def worst_ad(self) -> float | None:
        mean = self.summary("worst_case", "image_auroc").mean
        return mean if math.isfinite(mean) else None


def _block(card: Mapping[str, Any], budget: Mapping[str, Any] | None, name: str
           ) -> Mapping[str, Any] | None:
    if name == "clean":
        return card.get("clean")
    if name == "certified":
        return certified_at(card, budget)
    return (budget or {}).get(name)


def certified_at(card: Mapping[str, Any], budget: Mapping[str, Any] | None
                 ) -> Mapping[str, Any] | None:
    """The certified numbers of an L2 card's budget where the model was certified at that
    radius (`cards.certified_block`); None elsewhere."""
    if card.get("threat") != "l2" or budget is None:
        return None
    return next((entry.get("certified") for entry in card.get("certified") or []
                 if entry.get("radius") == budget.get("eps")), None)


def lines_of(cards: Iterable[Mapping[str, Any]]) -> list[Line]:
    """Lines grouped by (dataset, category, threat, budget, suite, precision); in each group
    the reliable lines first, best worst-case AD first (a missing number last), then by
    name for a stable order."""
    models: dict[tuple, list[tuple[dict, Mapping | None]]] = defaultdict(list)
    for card in map(upgraded, cards):
        for budget in card.get("robust") or [None]:
            group = Line((card,), (budget,)).group
            models[(group, json.dumps(model_key(card), default=str))].append((card, budget))
    lines = [line for found in models.values() for line in _seed_lines(found)]
    return sorted(lines, key=lambda ln: (ln.group, ln.unreliable, ln.worst_ad is None,
                                         -(ln.worst_ad or 0.0), ln.card["name"]))


def _seed_lines(found: list[tuple[dict, Mapping | None]]) -> list[Line]:
    """One model's cards at one budget: one line over its seeds where each card has its own
    seed; otherwise (a card without a seed, a seed met twice) one line per card."""
    seeds = [(c.get("model") or {}).get("seed") for c, _ in found]
    if None not in seeds and len(set(seeds)) == len(seeds):
        ordered = sorted(found, key=lambda cb: cb[0]["model"]["seed"])
        return [Line(tuple(c for c, _ in ordered), tuple(b for _, b in ordered))]
    return [Line((c,), (b,)) for c, b in found]
