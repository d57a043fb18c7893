"""The training keys that can move the worst case (issue 29): the objective mix of the
training attack (train.image_score_share), the TRADES-style balance (train.trades_beta) and the
attention weight as a ratio to the detection loss (loss.attention_ratio)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from helpers import tiny_experiment

import pgray.attacks.pgd as pgd
import pgray.attacks.trajectory as trajectory
from pgray.config import ExperimentConfig
from pgray.core.losses import patchguard_loss, trades_kl
from pgray.core.model import PatchGuard
from pgray.core.step import batch_objectives, train_epoch, train_step, training_attack
from pgray.errors import ConfigError

BATCH = 2
CPU = torch.device("cpu")


def tiny_model(cfg, seed: int = 0) -> PatchGuard:
    torch.manual_seed(seed)
    return PatchGuard(cfg.model)


def tiny_batch(model: PatchGuard, seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = model.num_patches
    return {"image": torch.rand(BATCH, 3, size, size, generator=g),
            "pseudo_image": torch.rand(BATCH, 3, size, size, generator=g),
            "pseudo_patch_labels": (torch.rand(BATCH, n, generator=g) > 0.7).float()}


class ObjectiveCounter:
    """Wraps the attacks' `make_objective`: which objective each attack was built with
    (`built`, in call order) and how often each kind scored an iterate (`calls`, one per attack
    step). The objectives themselves run unchanged."""

    def __init__(self, monkeypatch) -> None:
        self.built: list[str] = []
        self.calls: Counter[str] = Counter()
        real = trajectory.make_objective

        def counting(labels, kind, **kwargs):
            objective = real(labels, kind, **kwargs)
            self.built.append(kind)

            def counted(scores, units):
                self.calls[kind] += 1
                return objective(scores, units)

            return counted

        monkeypatch.setattr(trajectory, "make_objective", counting)


# ---------------------------------------------------------------- the training attack's objective


@pytest.mark.parametrize(("train", "mask_calls", "image_score_calls"), [
    ({}, 4, 0),  # the reference: mask, 2 batches x 2 steps
    ({"attack": {"objective": "image_score"}}, 0, 4),
    ({"image_score_share": 0.0}, 4, 0),
    ({"image_score_share": 1.0}, 0, 4),
])
def test_the_objective_keys_change_the_objective_the_step_attacks_with(
        tmp_path, monkeypatch, train, mask_calls, image_score_calls):
    cfg = tiny_experiment(tmp_path, train=train)
    counter = ObjectiveCounter(monkeypatch)
    model = tiny_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = train_step(model, tiny_batch(model), cfg, optimizer, device=CPU)
    assert counter.calls["mask"] == mask_calls
    assert counter.calls["image_score"] == image_score_calls
    assert len(counter.built) == 2  # one attack per attacked batch
    assert out["image_score_batches"].item() == image_score_calls / 4


def test_a_share_mixes_both_objectives_per_batch_from_the_step_seed(tmp_path, monkeypatch):
    cfg = tiny_experiment(tmp_path, train={"image_score_share": 0.5, "attack": {"steps": 1}})
    counter = ObjectiveCounter(monkeypatch)
    model = tiny_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = tiny_batch(model)
    seeds = [2 * i for i in range(12)]
    reported = []
    for seed in seeds:
        out = train_step(model, batch, cfg, optimizer, device=CPU, step_seed=seed)
        reported.append(out["image_score_batches"].item())
    ran = [tuple(counter.built[2 * i:2 * i + 2]) for i in range(len(seeds))]
    # both objectives ran, on normal and on pseudo-anomalous batches, each step's as drawn
    assert ran == [batch_objectives(cfg, seed) for seed in seeds]
    assert {kinds[0] for kinds in ran} == {kinds[1] for kinds in ran} == {"mask", "image_score"}
    assert counter.calls["mask"] + counter.calls["image_score"] == 2 * len(seeds)
    assert reported == [kinds.count("image_score") / 2 for kinds in ran]
    # a resumed run draws the same: the draws depend on the step seed alone
    counter.built.clear()
    train_step(model, batch, cfg, optimizer, device=CPU, step_seed=seeds[3])
    assert tuple(counter.built) == ran[3]
    assert batch_objectives(cfg, 6) == batch_objectives(copy.deepcopy(cfg), 6)


def test_the_share_draws_are_fixed_numbers():
    cfg = ExperimentConfig.from_dict({"train": {"image_score_share": 0.5}})
    draws = [batch_objectives(cfg, 2 * i) for i in range(200)]
    image_score = sum(d.count("image_score") for d in draws)
    assert 160 <= image_score <= 240  # 400 draws at p = 0.5: within 4 standard deviations
    assert batch_objectives(ExperimentConfig(), 0) == ("mask", "mask")
    zero = ExperimentConfig.from_dict({"train": {"image_score_share": 0.0}})
    one = ExperimentConfig.from_dict({"train": {"image_score_share": 1.0}})
    assert {batch_objectives(zero, s) for s in range(50)} == {("mask", "mask")}
    assert {batch_objectives(one, s) for s in range(50)} == {("image_score", "image_score")}


# ------------------------------------------------------------------------------ TRADES


def test_trades_kl_is_zero_at_equal_scores_and_pulls_attacked_towards_clean():
    clean = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], requires_grad=True)
    assert trades_kl(clean, clean.detach().clone()).item() == 0.0
    attacked = torch.tensor([[0.0, 1.0, 0.5], [2.0, -1.0, -2.0]], requires_grad=True)
    kl = trades_kl(clean, attacked)
    p, q = torch.sigmoid(clean.detach()), torch.sigmoid(attacked.detach())
    manual = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1).mean()
    torch.testing.assert_close(kl, manual)
    assert kl.item() == pytest.approx(1.149341, abs=1e-5)  # by hand, in float64
    kl.backward()
    # d KL / d attacked = (q - p) / images; the clean side is the (detached) target
    torch.testing.assert_close(attacked.grad, (q - p) / 2)
    assert clean.grad is None
    gap = (q - p).abs().sum()
    stepped = torch.sigmoid(attacked.detach() - 2.0 * attacked.grad)
    assert (stepped - p).abs().sum() < 0.8 * gap  # one step closes > 20 % of the gap
    with pytest.raises(ValueError, match="differ"):
        trades_kl(clean, attacked[:, :2])


def test_trades_term_in_a_step_pulls_a_models_attacked_scores_towards_its_clean_ones(tmp_path):
    cfg = tiny_experiment(tmp_path, train={"trades_beta": 2.0})
    model = tiny_model(cfg)
    batch = tiny_batch(model)
    x, y0 = batch["image"], torch.zeros_like(batch["pseudo_patch_labels"])
    x_adv = pgd.attack(model, x, y0, training_attack(cfg, "fp32"), seed=0)

    def kl() -> torch.Tensor:
        model.eval()
        return trades_kl(model(x), model(x_adv))

    before = kl().item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        kl().backward()
        optimizer.step()
    assert before > 0 and kl().item() < 0.5 * before

    model = tiny_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    out = train_step(model, batch, cfg, optimizer, device=CPU)
    bce = sum(out[f"bce_{t}"] for t in ("clean_normal", "adv_normal", "clean_pseudo",
                                        "adv_pseudo"))
    attention = 4 * out["attn_lambda_eff"] * out["attn_reg"]
    assert out["trades"].item() > 0
    torch.testing.assert_close(out["loss"], bce + attention + out["trades"])


# ---------------------------------------------------------------- the attention ratio


def step_with_weights(tmp_path, scale: float, loss: dict) -> tuple[dict, list[torch.Tensor]]:
    cfg = tiny_experiment(tmp_path, loss={"attention_weights": [0.01 * scale, 0.05 * scale]}
                          | loss)
    model = tiny_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(3)  # the same dropout in both steps
    out = train_step(model, tiny_batch(model), cfg, optimizer, device=CPU)
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("ratio", [0.0, 0.25, 2.0])
def test_attention_ratio_sets_the_terms_share_of_the_loss_at_any_scale(tmp_path, ratio):
    one, grads_one = step_with_weights(tmp_path, 1.0, {"attention_ratio": ratio})
    big, grads_big = step_with_weights(tmp_path, 1000.0, {"attention_ratio": ratio})
    for out in (one, big):
        assert out["attn_share"].item() == pytest.approx(ratio / (1 + ratio), rel=1e-5)
    assert big["attn_reg"].item() == pytest.approx(1000 * one["attn_reg"].item(), rel=1e-4)
    if ratio:
        assert one["attn_lambda_eff"].item() == pytest.approx(
            1000 * big["attn_lambda_eff"].item(), rel=1e-4)
    torch.testing.assert_close(one["loss"], big["loss"])
    for a, b in zip(grads_one, grads_big):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the reference weight gives a share that follows the scale instead
    ref_one, _ = step_with_weights(tmp_path, 1.0, {})
    ref_big, _ = step_with_weights(tmp_path, 1000.0, {})
    assert ref_big["attn_share"] > 10 * ref_one["attn_share"] > 0
    assert ref_one["attn_lambda_eff"].item() == 1.0


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize(("overrides", "key"), [
    ({"train": {"image_score_share": 1.5}}, "train.image_score_share"),
    ({"train": {"image_score_share": -0.1}}, "train.image_score_share"),
    ({"train": {"image_score_share": 0.5, "attack": {"objective": "image_score"}}},
     "train.image_score_share"),
    ({"train": {"image_score_share": 0.5, "adversarial": False}}, "train.image_score_share"),
    ({"train": {"trades_beta": -1.0}}, "train.trades_beta"),
    ({"train": {"trades_beta": float("inf")}}, "train.trades_beta"),
    ({"train": {"trades_beta": 1.0, "adversarial": False}}, "train.trades_beta"),
    ({"loss": {"attention_ratio": -0.5}}, "loss.attention_ratio"),
    ({"loss": {"attention_ratio": float("nan")}}, "loss.attention_ratio"),
    ({"loss": {"attention_ratio": 1.0, "attention_lambda": 5.0}}, "loss.attention_ratio"),
    ({"loss": {"attention_ratio": "high"}}, "loss.attention_ratio"),
])
def test_bad_training_keys_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')}"):
        ExperimentConfig.from_dict(overrides)


def test_training_key_defaults_are_the_reference():
    cfg = ExperimentConfig()
    assert cfg.train.image_score_share is None and cfg.train.trades_beta == 0.0
    assert cfg.loss.attention_ratio is None and cfg.loss.attention_lambda == 1.0
    ok = ExperimentConfig.from_dict({"train": {"image_score_share": 0.3, "trades_beta": 6.0},
                                     "loss": {"attention_ratio": 0.1}})
    assert ok.train.image_score_share == 0.3 and ok.loss.attention_ratio == 0.1


# ----------------------------------------------------------------------- the defaults


def test_a_step_at_the_defaults_is_the_reference_step_bit_for_bit(tmp_path):
    cfg = tiny_experiment(tmp_path)
    model = tiny_model(cfg)
    twin = copy.deepcopy(model)
    batch = tiny_batch(model)
    torch.manual_seed(11)
    out = train_step(model, batch, cfg, torch.optim.SGD(model.parameters(), lr=0.0),
                     device=CPU, step_seed=8)

    # the reference step, recomputed from its parts: the label-true mask attack on both
    # batches, one forward, the PatchGuard loss of the four terms
    x, xt, yt = batch["image"], batch["pseudo_image"], batch["pseudo_patch_labels"]
    y0 = torch.zeros_like(yt)
    attack_cfg = training_attack(cfg, "fp32")
    assert attack_cfg.objective == "mask"
    x_adv = pgd.attack(twin, x, y0, attack_cfg, seed=8)
    xt_adv = pgd.attack(twin, xt, yt, attack_cfg, seed=9)
    twin.train()
    torch.manual_seed(11)
    with twin.capture_attention(cfg.loss.attention_layers) as maps:
        logits = twin(torch.cat([x, x_adv, xt, xt_adv]))
    loss, parts = patchguard_loss(logits.float(), torch.cat([y0, y0, yt, yt]),
                                  [m.float() for m in maps], cfg.loss, twin.num_prefix_tokens)
    (4 * loss).backward()
    assert torch.equal(out["loss"], (4 * loss).detach())
    assert torch.equal(out["attn_reg"], parts["attn_reg"])
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert out["trades"].item() == 0.0 and out["image_score_batches"].item() == 0.0
    assert out["attn_lambda_eff"].item() == 1.0
    share = 4 * parts["attn_reg"] / (4 * loss.detach())
    torch.testing.assert_close(out["attn_share"], share)


def test_the_new_step_outputs_reach_the_epochs_metrics(tmp_path):
    cfg = tiny_experiment(tmp_path, train={"image_score_share": 1.0, "trades_beta": 1.0},
                          loss={"attention_ratio": 0.5})
    model = tiny_model(cfg)
    batches = [tiny_batch(model, seed) for seed in range(2)]
    metrics = train_epoch(model, batches, cfg, torch.optim.SGD(model.parameters(), lr=0.0),
                          device=CPU)
    assert metrics["steps"] == 2.0
    assert metrics["image_score_batches"] == 1.0
    assert metrics["trades"] > 0 and metrics["attn_lambda_eff"] > 0
    assert 0 < metrics["attn_share"] < 1 / 3  # r/(1+r) of the BCE part, less with TRADES
