"""The held-out proxy's share of training time, at the default `proxy_every` and at every epoch.

    python benchmarks/proxy_share.py [--epochs N] [--quick]

Trains with pgray's own loop (`pgray.core.fit`, one process, one thread, no Ray) two configs:
the demo's trial (search_spaces/demo.yaml: N-FGSM, proxy PGD-5 on 64 pairs) and one shaped like
the reference (PGD-10 training, proxy PGD-10 on four pseudo-anomalies per held-out image, a
tenth of the train split held out) on a tiny ViT. Each runs with `proxy_every` left to pgray's
default (`config.passes.default_proxy_every`: about 10 % of the run from counted passes) and with a
proxy every epoch (the old default). Prints the time in proxies over the time in training epochs
(target: at most 10 % at the default) and the epochs that ran one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=24, help="epochs of the demo trial (its 24)")
    p.add_argument("--reference-epochs", type=int, default=60,
                   help="epochs of the reference-shaped run (long enough for proxies between "
                        "the first and the last)")
    p.add_argument("--quick", action="store_true", help="8 epochs, the demo trial only")
    return p.parse_args()


def demo_trial(epochs: int):
    """The demo sweep's trial config (weave, a mid lambda and min_size) without its rung-fixed
    proxy_every."""
    from pgray.config.search_sections import Target
    from pgray.config.search_space import builtin_space_path, load_search_space

    space = load_search_space(builtin_space_path("demo"))
    target = Target(dataset="synthetic", root="", category="weave",
                    options=tuple(sorted(space.target_entries()[0].options.items())))
    cfg = space.trial_config(target, {"loss.attention_lambda": 30.0, "pseudo.min_size": 40})
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def reference_shaped(epochs: int, root: Path):
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict

    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": "weave"},
        "model": to_dict(tiny_model_config(img_size=32)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"epochs": epochs, "batch_size": 16, "holdout_fraction": 0.1,
                  "attack": {"steps": 10}, "proxy_steps": 10, "proxy_repeats": 4},
    })


def timed_run(cfg) -> dict[str, float]:
    """Train `cfg` with core.fit; the seconds spent in epochs and in proxies."""
    import torch

    from pgray.core.fit import FitContext, fit

    torch.manual_seed(0)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    fit(cfg, FitContext(progress=False, report=lambda epoch, m, save: history.append(dict(m))))
    wall = time.perf_counter() - started
    train_s = sum(h["epoch_time_s"] for h in history)
    proxy_s = sum(h.get("proxy_time_s", 0.0) for h in history)
    return {"wall": wall, "train": train_s, "proxy": proxy_s,
            "epochs": [int(h["epoch"]) for h in history if "proxy_time_s" in h],
            "share": proxy_s / max(train_s, 1e-9)}


def main() -> int:
    args = parse()
    epochs = 8 if args.quick else args.epochs
    import torch

    from pgray.config.passes import PROXY_SHARE

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        from pgray.data.synthetic import generate

        configs = {"demo trial (N-FGSM, 48 px)": demo_trial(epochs)}
        if not args.quick:
            root = generate(Path(tmp) / "data", size=32, n_train=80, n_test=8,
                            categories=("weave",))
            configs["reference-shaped (PGD-10, 32 px)"] = reference_shaped(
                args.reference_epochs, root)
        rows = []
        for name, cfg in configs.items():
            for label, every in (("default", None), ("every epoch", 1)):
                run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                    cfg.train, proxy_every=every))
                print(f"{name}, proxy {label} ...", file=sys.stderr, flush=True)
                rows.append((name, label, run_cfg, timed_run(run_cfg)))

    print("\none process, one torch thread; "
          f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| config | epochs | proxy_every | epochs with a proxy | training s | proxy s | "
          f"proxy s / training s (target <= {PROXY_SHARE:.0%} at the default) |")
    print("|---|---|---|---|---|---|---|")
    for name, label, cfg, r in rows:
        epochs_run = ", ".join(map(str, r["epochs"]))
        if len(r["epochs"]) > 12:
            epochs_run = "all"
        print(f"| {name} | {cfg.train.epochs} | {label} | {epochs_run} | {r['train']:.1f} | "
              f"{r['proxy']:.1f} | {r['share']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
