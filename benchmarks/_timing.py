"""Timing helpers shared by the speed benchmarks (attack_step, precision, train_step).

These machines are noisy (shared cores, other jobs): every benchmark times its variants in one
process, interleaved round by round, and reports medians and minimums, so a ratio between two
variants compares like with like even when absolute times drift.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Where the repository root is not on sys.path (python benchmarks/x.py), make pgray importable.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call of fn, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@dataclass
class Samples:
    """Repeated timings of one variant, in seconds per unit (per step, per image...)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        return min(self.times) if self.times else float("nan")


def interleaved(
    variants: dict[str, Callable[[], Any]],
    device: torch.device,
    rounds: int,
    warmup: int = 1,
    per_call: float | dict[str, float] = 1.0,
) -> dict[str, Samples]:
    """Time each variant once per round, in turn, after `warmup` untimed rounds.

    `per_call` divides each call's time (e.g. the number of PGD steps in one call), per
    variant when given as a dict. The order rotates each round so no variant always runs
    right after the same neighbour (caches, clock boost).
    """
    names = list(variants)
    out = {name: Samples() for name in names}
    for _ in range(warmup):
        for name in names:
            timed(variants[name], device)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            div = per_call[name] if isinstance(per_call, dict) else per_call
            out[name].times.append(timed(variants[name], device) / div)
    return out


def ratio(a: Samples, b: Samples) -> tuple[float, float]:
    """(median of the per-round ratios, ratio of the minimums) of a over b.

    Per-round ratios pair calls made seconds apart, so slow drifts of the machine cancel;
    the minimums are each variant's least-disturbed call.
    """
    paired = statistics.median(x / y for x, y in zip(a.times, b.times))
    return paired, a.best / b.best


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def header(title: str, device: torch.device) -> str:
    import timm

    return (
        f"# {title}\n# device: {device_name(device)}; torch {torch.__version__},"
        f" timm {timm.__version__}, python {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default on CPU: 1, since on shared cores OpenMP"
                        " threads waiting for a busy sibling make every op many times slower)")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = resolve_device(name)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        # fp32 rows run as pgray's training runs fp32: on TF32 tensor cores (pick_device turns
        # it on); rows say so in their `tf32` field. Strict fp32 (evaluation attacks) is
        # gpu_utilisation.py's fp32 column.
        from pgray.core.device import enable_tf32

        enable_tf32(device)
    return device


def tf32_state() -> bool:
    """Whether fp32 matmuls and convolutions run on TF32 here (False on the CPU)."""
    return bool(torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32
                and torch.backends.cudnn.allow_tf32)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, heading, format spec)."""
    cells = [[heading for _, heading, _ in columns]]
    for row in rows:
        cells.append([_cell(row.get(key), spec) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Atomically (a stage killed at its time limit leaves the last complete file)."""
    if path is not None:
        from pgray.io import write_json as atomic_json

        atomic_json(path, payload)


def flops_per_call(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call, counted by torch's FlopCounterMode (matmuls,
    convolutions and attention; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())
