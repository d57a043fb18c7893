"""Arguments shared by the entry points, and turning them into a validated ExperimentConfig.

No heavy imports here: `--help` must stay fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from pgray.config.base import load_yaml, to_dict
from pgray.config.certify import CertifyConfig
from pgray.config.experiment import ExperimentConfig, merge, tiny_model_config


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=required, help="dataset layout name (mvtec, visa, ...)")
    g.add_argument("--root", required=required, help="dataset root folder")
    g.add_argument("--category", required=required, help="category to use")
    g.add_argument("--mask-resize", choices=["nearest", "lanczos_any"],
                   help="ground-truth mask resize rule (default nearest)")
    g.add_argument("--visa-split", choices=["1cls", "reference"], help="VisA split")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", help="experiment YAML (sections data, model, pseudo, loss, train,"
                   " eval); command-line flags override it")
    g.add_argument("--backbone", help="timm model name (default vit_small_patch14_dinov2)")
    g.add_argument("--img-size", type=int, help="input size in pixels (default 224)")
    g.add_argument("--pretrained", action="store_true", help="load hub weights (needs internet)")
    g.add_argument("--weights", help="local backbone weights file instead of a hub download")
    g.add_argument("--tiny", action="store_true",
                   help="a tiny ViT (img 32-64, depth 2) for CPU smoke runs")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave, as a nested config dict."""
    o: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            o.setdefault(section, {})[key] = value

    for key in ("dataset", "root", "category", "mask_resize", "visa_split"):
        put("data", key, getattr(args, key, None))
    put("model", "backbone", getattr(args, "backbone", None))
    put("model", "img_size", getattr(args, "img_size", None))
    put("model", "weights", getattr(args, "weights", None))
    if getattr(args, "pretrained", False):
        put("model", "pretrained", True)
    return o


def tiny_preset(img_size: int | None) -> dict[str, Any]:
    """--tiny: a depth-2 ViT and its attention layers; the YAML and flags still override it."""
    return {
        "model": to_dict(tiny_model_config(img_size=img_size or 32)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
    }


def build_config(args: argparse.Namespace, extra: dict[str, Any] | None = None
                 ) -> ExperimentConfig:
    """Precedence, lowest first: defaults, --tiny preset, --config YAML, flags."""
    base = tiny_preset(getattr(args, "img_size", None)) if getattr(args, "tiny", False) else {}
    if getattr(args, "config", None):
        base = merge(base, load_yaml(args.config))
    merged = merge(merge(base, overrides_from_args(args)), extra or {})
    return ExperimentConfig.from_dict(merged)


def config_hash(cfg: ExperimentConfig, n: int = 10) -> str:
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def default_run_name(cfg: ExperimentConfig) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in
                   f"{cfg.data.dataset}-{cfg.data.category}")
    return f"{safe}-{config_hash(cfg)}"


def key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE flags as a dict, each value read as YAML."""
    import yaml

    from pgray.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def detector_and_data(args: argparse.Namespace):
    """`pgray.train --detector NAME ...`: the baseline's DetectorConfig and its DataConfig
    (the data section of --config, then --dataset / --root / --category)."""
    import yaml

    from pgray.config.base import from_dict
    from pgray.config.detector import DetectorConfig
    from pgray.config.experiment import DataConfig

    layers = [yaml.safe_load(x) for x in args.layers] if args.layers else None  # 12 -> int
    fields = {"name": args.detector, "backbone": args.backbone, "img_size": args.img_size,
              "layers": layers, "weights": args.weights,
              "options": key_values(args.detector_option, "--detector-option")}
    if args.pretrained:
        fields["pretrained"] = True
    det = from_dict(DetectorConfig, {k: v for k, v in fields.items() if v is not None},
                    "detector")
    data = dict(load_yaml(args.config).get("data") or {}) if args.config else {}
    data |= {k: v for k, v in {"dataset": args.dataset, "root": args.root,
                               "category": args.category}.items() if v is not None}
    return det, from_dict(DataConfig, data, "data")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """`--plan` and the cluster it plans for (the benchmark and the sweep)."""
    g = p.add_argument_group("plan (nothing runs)")
    g.add_argument("--plan", action="store_true",
                   help="print the trainings and evaluation jobs, the resources each asks for,"
                        " how many run at once, and an estimate of GPU-hours and wall time")
    g.add_argument("--gpus", type=float, help="plan for a cluster with this many GPUs (default:"
                   " the connected cluster, else this machine)")
    g.add_argument("--cpus", type=float, help="its CPUs (default 16 per GPU)")
    g.add_argument("--gpu", choices=["h100", "h200"], default="h100",
                   help="the GPU whose datasheet peaks (bf16, TF32, fp32) the estimate uses")
    g.add_argument("--gpu-profile", metavar="FILE",
                   help="measured utilisation per batch size (gpu_utilisation.json, written by"
                        " benchmarks/gpu_check.sh; default benchmarks/gpu_utilisation.json if"
                        " present, else an assumed table, labelled so)")
    g.add_argument("--gpu-utilization", type=float, default=None,
                   help="one fraction of the peak for every batch size, instead of the table")


def add_certify_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("certification by percentile smoothing (docs/method.md,"
                             " \"Certification\")")
    c.add_argument("--certify", type=float, nargs="+", default=[], metavar="R",
                   help="L2 radii to certify (--l2-eps's unit): per radius, the smoothed"
                        " detector's certified AUROCs and AUPRO, the l2 suite's numbers"
                        " against it, and the base detector's beside them")
    c.add_argument("--certify-sigma", type=float,
                   help="the Gaussian noise's scale on [0, 1] pixels at the input size"
                        f" (default {CertifyConfig.sigma:g})")
    c.add_argument("--certify-samples", type=int,
                   help=f"noise samples per image (default {CertifyConfig.samples})")
    c.add_argument("--certify-confidence", type=float,
                   help="probability that all bounds of a row hold at once (default"
                        f" {CertifyConfig.confidence:g})")
    c.add_argument("--certify-eot", type=int,
                   help="noise samples averaged in each attack step on the smoothed detector"
                        f" (default {CertifyConfig.eot_samples})")


def certify_dict(args: argparse.Namespace) -> dict[str, Any] | None:
    """The `eval.certify` section from the flags (None without --certify)."""
    if not args.certify:
        return None
    flags = {"sigma": args.certify_sigma, "samples": args.certify_samples,
             "confidence": args.certify_confidence, "eot_samples": args.certify_eot}
    return {"radii": args.certify} | {k: v for k, v in flags.items() if v is not None}
