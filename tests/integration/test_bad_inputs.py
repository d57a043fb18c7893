"""A table of bad inputs across the CLIs: each gets its exit code and a one-line message that
names the input, never a traceback."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import tiny_experiment

from pgray.errors import run_cli

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    id: str
    cli: str  # module whose main() runs
    argv: Callable[[dict], list[str]]  # built from the prepared inputs
    code: int
    says: Callable[[dict], list[str]]  # substrings the message must contain


def _data(ctx, *extra):
    return ["check", "--dataset", "mvtec", "--root", str(ctx["mvtec"]), *extra]


def _train(ctx, *extra):
    return ["--dataset", "synthetic", "--root", str(ctx["syn"]), "--category", "disc", "--tiny",
            "--epochs", "1", "--max-steps-per-epoch", "1", "--out", str(ctx["tmp"] / "t"),
            "--quiet", *extra]


def _eval(ctx, ckpt, *extra):
    return ["--checkpoint", str(ckpt), "--out", str(ctx["tmp"] / "e"), "--quiet", *extra]


def _sweep(ctx, name):
    return ["--config", str(ctx["spaces"][name]), "--out", str(ctx["tmp"] / "s"), "--quiet"]


CASES = [
    Case("unknown dataset", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "nope", "--root", str(c["mvtec"])], 2,
         lambda c: ["nope", "mvtec"]),
    Case("unknown category", "pgray.data.__main__", lambda c: _data(c, "--category", "nope"), 2,
         lambda c: ["nope"]),
    Case("missing dataset root", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["tmp"] / "absent")], 2,
         lambda c: [str(c["tmp"] / "absent"), "not found"]),
    Case("empty dataset root", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["empty"])], 2,
         lambda c: [str(c["empty"])]),
    Case("image without its mask", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["no_mask"])], 2,
         lambda c: [c["no_mask_file"]]),
    Case("mask without its image", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["orphan"])], 2,
         lambda c: [c["orphan_file"]]),
    Case("mask of the wrong size", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["bad_size"])], 2,
         lambda c: [c["bad_size_file"]]),
    Case("truncated image file", "pgray.data.__main__",
         lambda c: ["check", "--dataset", "mvtec", "--root", str(c["truncated"])], 2,
         lambda c: [c["truncated_file"]]),
    Case("unknown backbone", "pgray.train", lambda c: _train(c, "--backbone", "vit_nope_999"), 2,
         lambda c: ["vit_nope_999"]),
    Case("top-k larger than the patch count", "pgray.train",
         lambda c: _train(c, "--config", str(c["topk_yaml"])), 2, lambda c: ["top_k", "500"]),
    Case("attention layer beyond the depth", "pgray.train",
         lambda c: _train(c, "--config", str(c["layer_yaml"])), 2, lambda c: ["9"]),
    Case("experiment YAML with an unknown key", "pgray.train",
         lambda c: _train(c, "--config", str(c["unknown_exp_yaml"])), 2,
         lambda c: ["train.epochz"]),
    Case("invalid run name", "pgray.train", lambda c: _train(c, "--name", "../escape"), 2,
         lambda c: ["../escape"]),
    Case("storage URI with an unsupported scheme", "pgray.train",
         lambda c: _train(c, "--workers", "2", "--storage", "ftp://host/x"), 3,
         lambda c: ["ftp"]),
    Case("unreachable Ray address", "pgray.train",
         lambda c: _train(c, "--workers", "2", "--address", "127.0.0.1:9"), 3,
         lambda c: ["127.0.0.1:9"]),
    Case("unreachable MLflow server", "pgray.train",
         lambda c: _train(c, "--mlflow-uri", "http://127.0.0.1:9"), 3,
         lambda c: ["http://127.0.0.1:9"]),
    Case("eps below 0", "pgray.evaluate", lambda c: _eval(c, c["ckpt"], "--eps", "-1"), 2,
         lambda c: ["eps", "-1"]),
    Case("eps above 255", "pgray.evaluate", lambda c: _eval(c, c["ckpt"], "--eps", "300"), 2,
         lambda c: ["eps", "300"]),
    Case("zero PGD steps", "pgray.evaluate", lambda c: _eval(c, c["ckpt"], "--steps", "0"), 2,
         lambda c: ["steps"]),
    Case("missing checkpoint", "pgray.evaluate", lambda c: _eval(c, c["tmp"] / "none.pt"), 2,
         lambda c: ["none.pt"]),
    Case("truncated checkpoint", "pgray.evaluate", lambda c: _eval(c, c["truncated_ckpt"]), 2,
         lambda c: [str(c["truncated_ckpt"])]),
    Case("a file that is not a checkpoint", "pgray.evaluate",
         lambda c: _eval(c, c["not_ckpt"]), 2, lambda c: [str(c["not_ckpt"]), "not"]),
    Case("checkpoint from another architecture", "pgray.train",
         lambda c: _train(c, "--name", "arch", "--out", str(c["arch_out"]), "--img-size", "64"),
         2, lambda c: ["vit_tiny_patch16_224@32", "@64"]),
    Case("search space with an unknown key", "pgray.sweep", lambda c: _sweep(c, "unknown"), 2,
         lambda c: ["budgett"]),
    Case("search space with a wrong type", "pgray.sweep", lambda c: _sweep(c, "wrong_type"), 2,
         lambda c: ["trials"]),
    Case("search space with an empty range", "pgray.sweep", lambda c: _sweep(c, "empty"), 2,
         lambda c: ["empty range"]),
    Case("search space with low > high", "pgray.sweep", lambda c: _sweep(c, "low_high"), 2,
         lambda c: ["low > high"]),
    Case("search space with a log range including 0", "pgray.sweep",
         lambda c: _sweep(c, "log_zero"), 2, lambda c: ["log range"]),
    Case("benchmark YAML with an unknown key", "pgray.benchmark",
         lambda c: ["--config", str(c["bench_yaml"]), "--out", str(c["tmp"] / "b")], 2,
         lambda c: ["actorz"]),
]


def _break_tree(src: Path, dst: Path, how: str) -> str:
    """Copy a valid MVTec tree and break one rule; return the offending file's name."""
    shutil.copytree(src, dst)
    gt = dst / "bottle" / "ground_truth"
    test = dst / "bottle" / "test"
    mask = sorted(p for p in gt.rglob("*_mask.png"))[0]
    image = test / mask.parent.name / mask.name.replace("_mask", "")
    if how == "no_mask":
        mask.unlink()
        return image.name
    if how == "orphan":
        image.unlink()
        return mask.name
    if how == "bad_size":
        from PIL import Image

        Image.new("L", (7, 5)).save(mask)
        return mask.name
    good = sorted((dst / "bottle" / "train" / "good").iterdir())[0]
    good.write_bytes(good.read_bytes()[:60])
    return good.name


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, synthetic_root):
    from datatrees import write_tree

    from pgray.pipelines.train import TrainRequest, train_category

    tmp = tmp_path_factory.mktemp("bad")
    c: dict = {"tmp": tmp, "syn": synthetic_root, "empty": tmp / "empty_root"}
    c["empty"].mkdir()
    c["mvtec"] = write_tree("mvtec", tmp / "mvtec")
    for how in ("no_mask", "orphan", "bad_size", "truncated"):
        c[how] = tmp / how
        c[f"{how}_file"] = _break_tree(c["mvtec"], c[how], how)
    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})
    c["ckpt"] = train_category(TrainRequest(config=cfg, out=tmp / "ckpt", name="bad-inputs",
                                            progress=False)).checkpoint
    c["truncated_ckpt"] = tmp / "truncated.pt"
    c["truncated_ckpt"].write_bytes(c["ckpt"].read_bytes()[:2000])
    c["not_ckpt"] = tmp / "notes.pt"
    c["not_ckpt"].write_text('{"this": "is json"}')
    # a run folder whose checkpoint was trained at 32 px; resuming it at 64 px must refuse
    c["arch_out"] = tmp / "arch"
    train_category(TrainRequest(config=tiny_experiment(synthetic_root, train={"epochs": 1}),
                                out=c["arch_out"], name="arch", progress=False))

    def put(name, data):
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    c["topk_yaml"] = put("topk", {"model": {"top_k": 500}})
    c["layer_yaml"] = put("layer", {"loss": {"attention_layers": [9], "attention_weights": [1]}})
    c["unknown_exp_yaml"] = put("unknown_exp", {"train": {"epochz": 3}})
    demo = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    spaces = {
        "unknown": demo | {"budgett": {"trials": 1}},
        "wrong_type": demo | {"budget": {"trials": "three", "epochs": 1}},
        "empty": demo | {"search": {"loss.attention_lambda": {"type": "uniform", "low": 1,
                                                               "high": 1}}},
        "low_high": demo | {"search": {"loss.attention_lambda": {"type": "uniform", "low": 2,
                                                                  "high": 1}}},
        "log_zero": demo | {"search": {"loss.attention_lambda": {"type": "loguniform",
                                                                  "low": 0, "high": 1}}},
    }
    c["spaces"] = {k: put(f"space_{k}", v) for k, v in spaces.items()}
    c["bench_yaml"] = put("bench", {"name": "b", "datasets": [{"dataset": "synthetic"}],
                                    "actorz": {"count": 1}})
    return c


def test_at_least_25_bad_inputs_are_covered():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ctx, capsys):
    import importlib

    main = importlib.import_module(case.cli).main
    code = run_cli(main, case.argv(ctx))
    err = capsys.readouterr().err
    assert code == case.code, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for text in case.says(ctx):
        assert text in err, f"{text!r} not in {err!r}"
