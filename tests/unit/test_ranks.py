"""Two data-parallel ranks (gloo, two processes): each its own random stream, restored on
resume, and the held-out proxy split between them with the numbers of one process."""

from __future__ import annotations

import math

import torch
import torch.multiprocessing as mp
from helpers import tiny_experiment
from rank_workers import two_rank_checks

from pgray.core.checkpoint import read_checkpoint
from pgray.core.fit import restore_state
from pgray.core.model import PatchGuard
from pgray.core.proxy import proxy_metrics
from pgray.core.step import build_optimizer
from pgray.core.training_data import build_datasets, proxy_batch_size, proxy_batches


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_two_ranks_draw_apart_resume_their_own_streams_and_share_the_proxy(
        synthetic_root, tmp_path, capsys):
    # forked, not spawned: the ranks start with this process's imports (seconds each)
    mp.start_processes(two_rank_checks, args=(2, str(tmp_path / "init"), str(synthetic_root),
                                              str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # seed + rank: the ranks' torch draws and their pseudo-anomalies differ
    assert not torch.equal(ranks[0]["first_draws"], ranks[1]["first_draws"])
    torch.manual_seed(0)
    assert torch.equal(ranks[0]["first_draws"], torch.rand(4))  # rank 0 = one process
    assert not torch.equal(ranks[0]["pseudo_mask"], ranks[1]["pseudo_mask"])
    # each rank, resumed, draws what it would have drawn without the interruption
    for rank in ranks:
        assert torch.equal(rank["resumed"], rank["uninterrupted"])
    assert not torch.equal(ranks[0]["resumed"], ranks[1]["resumed"])

    # the proxy: four batches, two per rank, gathered on rank 0 only
    assert ranks[0]["proxy_batches"] == [0, 2] and ranks[1]["proxy_batches"] == [1, 3]
    assert ranks[1]["proxy"] is None
    cfg = tiny_experiment(synthetic_root)
    torch.manual_seed(0)
    model = PatchGuard(cfg.model)
    _, holdout = build_datasets(cfg, model.patch_size)
    alone = proxy_metrics(model, proxy_batches(holdout, proxy_batch_size(len(holdout), 8)),
                          cfg, device=torch.device("cpu"))
    assert _same(ranks[0]["proxy"], alone), (ranks[0]["proxy"], alone)
    assert 0.0 <= alone["proxy_worst_image_auroc"] <= 1.0

    # a checkpoint of two ranks resumed by one process: reseeded, and said so
    optimizer, scheduler = build_optimizer(model, cfg)
    restore_state(read_checkpoint(tmp_path / "checkpoint.pt"), model, optimizer, scheduler,
                  seed=cfg.train.seed, rank=0, world_size=1)
    assert "holds random states of 2 rank(s), this run has 1" in capsys.readouterr().err


def test_the_batch_is_global_and_split_and_small_gpu_shares_are_warned():
    from pgray.core.training_data import batch_params, describe_batch

    assert batch_params(16, 8) == {"global": 16, "per_worker": 2, "workers": 8,
                                   "effective_global": 16}
    assert batch_params(10, 4)["effective_global"] == 12  # 3 each: rounded up
    lines = describe_batch(16, 8, "cuda")
    assert lines[0] == "batch: global 16 = 2 per worker x 8 worker(s)"
    assert lines[1].startswith("warning: 2 images per GPU (< 8)")
    assert describe_batch(16, 8, "cpu") == lines[:1]  # the CPU has no idle tensor cores
    assert len(describe_batch(64, 4, "cuda")) == 1
