"""The cluster a plan is for: described by flags, the connected Ray cluster, or this machine;
and the resources a trial asks of it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Cluster:
    cpus: float
    gpus: float
    source: str  # "connected Ray cluster", "described (--gpus 8)", "this machine"

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus}


def describe_cluster(gpus: float | None, cpus: float | None, address: str | None) -> Cluster:
    """--gpus/--cpus describe a cluster; else the one at --address / RAY_ADDRESS; else this
    machine (nothing is started)."""
    if gpus is not None:
        cpus = cpus if cpus is not None else max(16.0 * gpus, 1.0)
        return Cluster(cpus, gpus, f"described (--gpus {gpus:g} --cpus {cpus:g})")
    if address or os.environ.get("RAY_ADDRESS"):
        from pgray.distributed.cluster import cluster_resources, connect

        connect(address)
        have = cluster_resources()
        return Cluster(have.get("CPU", 0.0), have.get("GPU", 0.0), "connected Ray cluster")
    import torch

    return Cluster(float(os.cpu_count() or 1), float(torch.cuda.device_count()), "this machine")


def summarize_resources(res, gpus: float) -> dict[str, float]:
    """What one trial of `res` holds at `gpus` per worker."""
    per = res.per_trial()
    return {"CPU": per["CPU"], "GPU": res.workers_per_trial * gpus}


def worker_gpus(res, cluster: Cluster) -> float:
    """GPUs per worker as the run would resolve them on this cluster."""
    if res.gpus_per_worker is None:
        return 1.0 if cluster.gpus > 0 else 0.0
    return float(res.gpus_per_worker)
