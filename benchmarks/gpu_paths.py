"""The CUDA paths of pgray that one GPU can show, each once:

- ray_train_one_gpu_worker: a Ray Train run with one GPU worker. Its process group is NCCL,
  but with one worker DDP skips its broadcast and all-reduces: no collective runs here.
- nccl_collectives_world_1: torch.distributed on NCCL (gloo with --smoke) at world size 1,
  in this process: an all_reduce of a CUDA tensor and the gather_object the held-out proxy
  and the per-rank RNG states use; and TF32 on after pick_device. A world of one sends no
  bytes between GPUs: NCCL between GPUs needs a machine with several.
- eval_actors_half_a_gpu: a benchmark whose evaluation actors share one GPU (0.5 each).
- bf16_attack_and_step: bf16 autocast in the attack and the training step.

With --smoke the same paths run on the CPU (no GPU asked for; gloo; CPU autocast).

    python benchmarks/gpu_paths.py --device cuda --out DIR
    python benchmarks/gpu_paths.py --smoke --out DIR

Writes DIR/paths.json (one record per path: ok, what was seen) after every path.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import _timing as tm


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quick", action="store_true", help="(gpu_check.sh --smoke)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.smoke = True
    if args.smoke:
        args.device = "cpu"
    return args


def tiny(root: Path, category: str = "disc"):
    """A tiny PatchGuard experiment (32 px, depth 2) that trains in seconds."""
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict

    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": category},
        "model": to_dict(tiny_model_config(img_size=32)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"epochs": 1, "batch_size": 4, "holdout_fraction": 0.25, "proxy_steps": 2,
                  "attack": {"eps": 8.0, "steps": 2}, "max_steps_per_epoch": 2},
    })


def ray_train_path(root: Path, work: Path, gpu: bool) -> dict:
    from pgray.pipelines.train import TrainRequest, train_category

    result = train_category(TrainRequest(
        config=tiny(root), out=work / "train", name="gpu-paths-train", use_ray=True,
        workers=1, cpus_per_worker=1.0, progress=False))
    last = result.history[-1]
    ok = last["worker_gpus"] == (1.0 if gpu else 0.0) and last["worker_cuda"] == float(gpu)
    from pgray.distributed.train import gpu_nodes_have_cuda

    backend = "nccl" if gpu and gpu_nodes_have_cuda() else "gloo"
    return {"ok": ok, "seen": f"worker GPUs {last['worker_gpus']:g}, worker on CUDA"
            f" {bool(last['worker_cuda'])}, DDP backend {backend}", "checkpoint":
            str(result.checkpoint)}


def actors_path(root: Path, work: Path, checkpoint: str, gpu: bool) -> dict:
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cfg = from_dict(BenchmarkConfig, {
        "name": "gpu-paths", "eps": [4.0, 8.0], "steps": [2], "suite": "protocol",
        "n_panels": 0, "batch_size": 8,
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": ["disc"],
                      "checkpoint": checkpoint}],
        "actors": {"count": 2, "cpus": 0.5, "gpus": 0.5 if gpu else 0.0}})
    result = run_benchmark(cfg, work / "bench", progress=False)
    devices = sorted({r["device"] for r in result.rows})
    want = "cuda:0" if gpu else "cpu"
    return {"ok": devices == [want] and result.ran == 3,
            "seen": f"{result.ran} jobs on devices {devices}, up to {result.peak_actors} actors"
                    f" of {'0.5 GPU' if gpu else '0 GPU'} each"}


def process_group_device(device):
    """The `device_id` for init_process_group: a CUDA device with its index (NCCL refuses a
    bare 'cuda': "Please use a device_id with index"), None on the CPU (gloo takes none)."""
    import torch

    if device.type != "cuda":
        return None
    if device.index is not None:
        return device
    index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    return torch.device("cuda", index)


def process_group_options(work: Path, device) -> dict:
    """init_process_group's arguments for a world of one on `device`."""
    options = {"backend": "nccl" if device.type == "cuda" else "gloo",
               "init_method": f"file://{work / 'process-group'}", "rank": 0, "world_size": 1}
    device_id = process_group_device(device)
    if device_id is not None:
        options["device_id"] = device_id
    return options


def collectives_path(work: Path, device) -> dict:
    import torch
    import torch.distributed as dist

    from pgray.core.device import pick_device

    gpu = device.type == "cuda"
    picked = pick_device("cuda" if gpu else "cpu")
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
    options = process_group_options(work, picked)
    backend = options["backend"]
    dist.init_process_group(**options)
    try:
        value = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(value)
        gathered = [None]
        dist.gather_object({"rank": 0, "scores": [0.25, 0.75]}, gathered, dst=0)
    finally:
        dist.destroy_process_group()
    ok = (value.tolist() == [0.0, 1.0, 2.0, 3.0] and gathered[0]["scores"] == [0.25, 0.75]
          and tf32 == gpu)
    return {"ok": ok, "seen": f"{backend} all_reduce on {value.device} and gather_object at"
            f" world size 1; TF32 matmul/cudnn after pick_device: {tf32}"}


def bf16_path(root: Path, device) -> dict:
    import torch

    from pgray.attacks.objectives import unit_labels
    from pgray.attacks.pgd import attack
    from pgray.config import AttackConfig
    from pgray.core.model import PatchGuard
    from pgray.core.step import build_optimizer, train_step

    cfg = tiny(root)
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).to(device)
    x = torch.rand(8, 3, 32, 32, device=device)
    masks = torch.zeros(8, 1, 32, 32, device=device)
    masks[4:, :, 8:16, 8:16] = 1
    labels = unit_labels(model, masks)
    adv = {p: attack(model, x, labels, AttackConfig(eps=8.0, steps=5, precision=p))
           for p in ("fp32", "bf16")}
    same_sign = float(((adv["fp32"] - x).sign() == (adv["bf16"] - x).sign()).float().mean())
    optimizer, _ = build_optimizer(model, cfg)
    batch = {"image": x[:4], "pseudo_image": x[4:],
             "pseudo_patch_labels": labels[4:]}
    out = train_step(model, batch, cfg, optimizer, device=device, precision="bf16")
    loss = float(out["loss"])
    return {"ok": bool(torch.isfinite(torch.tensor(loss))) and same_sign > 0.5,
            "seen": f"bf16 train step loss {loss:.3f}; bf16 and fp32 PGD-5 perturbations share"
                    f" the sign of {100 * same_sign:.1f} % of pixels"}


def main(argv=None) -> int:
    args = parse(argv)
    device = tm.setup(args)
    gpu = device.type == "cuda"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from pgray.data.synthetic import generate
    from pgray.io import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        root = generate(work / "data", seed=0, size=32, n_train=12, n_test=8,
                        categories=("disc",))
        def run(name: str, path) -> dict:
            started = time.perf_counter()
            try:
                record = path()
            except Exception as err:  # noqa: BLE001 - every path is reported, pass or fail
                record = {"ok": False, "seen": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-2000:]}
            record["s"] = time.perf_counter() - started
            records[name] = record
            write_json(args.out / "paths.json", {"device": tm.device_name(device),
                                                 "paths": records})
            print(f"{name}: {'ok' if record['ok'] else 'FAILED'} ({record['seen']})",
                  flush=True)
            return record

        trained = run("ray_train_one_gpu_worker", lambda: ray_train_path(root, work, gpu))
        if "checkpoint" in trained:
            run("eval_actors_half_a_gpu",
                lambda: actors_path(root, work, trained["checkpoint"], gpu))
        run("nccl_collectives_world_1", lambda: collectives_path(work, device))
        run("bf16_attack_and_step", lambda: bf16_path(root, device))
    return 0 if all(r["ok"] for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
