"""`--plan`: what a benchmark or a sweep would run, what each piece asks of the cluster, how
many run at once, and an estimate of device-hours and wall time, without running anything.

Costs are counted in image-steps (one forward and one backward pass to the input of one
image, weights frozen): a PGD step is one. A training step's passes per normal image come from
`pgray.config.passes.step_passes` (24 at PGD-10: 2 x 10 attack passes, 4 update passes; 6 at
N-FGSM); an update pass also computes the weights' gradient and costs 1.5 image-steps, a
forward-only pass 0.5, so a PGD-10 training step costs 26 image-steps per normal image. A
training also runs the held-out proxy at its proxy epochs (`proxy_image_steps`). A sweep's
plan adds the final evaluation's clean twins (final_eval.clean_baseline) and the best
configs trained again with the other seeds (`seeds`), each with its evaluation jobs.

Image-steps become seconds through `pgray.pipelines.plan.speed`: on a GPU, the peak of the
precision that runs x the utilisation at the piece's batch size (measured by gpu_check.sh,
else assumed and labelled so); on the CPU, a rate measured on this machine just before.
The wall time adds the fixed costs of a run (FIXED_COSTS: starting Ray, each training's
process, each job, the report), read off a demo run on a 2-core machine.
"""

from __future__ import annotations

from pgray.pipelines.plan.cluster import Cluster, describe_cluster
from pgray.pipelines.plan.estimate import make_speed, render
from pgray.pipelines.plan.pieces import benchmark_pieces, sweep_pieces

__all__ = ["benchmark_plan", "describe_cluster", "sweep_plan"]


def benchmark_plan(cfg, cluster: Cluster, *, gpu: str = "h100", gpu_profile: str | None = None,
                   gpu_utilization: float | None = None) -> str:
    """The plan of `python -m pgray.benchmark --config FILE`."""
    from pgray.config import ExperimentConfig

    pieces, concurrent, actors = benchmark_pieces(cfg, cluster)
    speed = make_speed(cluster, ExperimentConfig.from_dict(cfg.train).model, gpu=gpu,
                       gpu_profile=gpu_profile, gpu_utilization=gpu_utilization)
    return render(f"benchmark {cfg.name}", pieces, cluster, speed, concurrent, actors)


def sweep_plan(space, cluster: Cluster, *, gpu: str = "h100", gpu_profile: str | None = None,
               gpu_utilization: float | None = None) -> str:
    """The plan of `python -m pgray.sweep --config FILE` (`sweep_pieces`)."""
    pieces, concurrent, actors = sweep_pieces(space, cluster)
    speed = make_speed(cluster, space.fixed_config().model, gpu=gpu, gpu_profile=gpu_profile,
                       gpu_utilization=gpu_utilization)
    return render(f"sweep {space.name}", pieces, cluster, speed, concurrent, actors)


