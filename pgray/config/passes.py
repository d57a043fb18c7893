"""What training costs, counted from the config alone in passes through the model: the
training attacks (`TRAIN_ATTACKS`, train.attack_method), the passes of one training step and of
one held-out proxy, and the proxy's schedule (`proxy_due`, `default_proxy_every`).

Plain arithmetic on an ExperimentConfig (no torch), so that every layer reads one rule:
`core.step` trains and reports by it, the search space fixes ASHA's proxy epochs with it, the
plan costs a run with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgray.config.experiment import ExperimentConfig

# image-steps of one pass (an image-step: a forward and an input gradient, weights frozen):
# forward and backward through the weights too; a forward alone
UPDATE_PASS_COST, FORWARD_PASS_COST = 1.5, 0.5

# The training attacks (train.attack_method), each at train.attack.eps. Passes: forward +
# backward passes per normal image and step, the attacks of both batches and the update.
TRAIN_ATTACKS = {
    # the reference: train.attack as configured (PGD-10, alpha 2.5 eps / steps, no random
    # start, last iterate)
    "pgd": {},
    # FGSM with a random start, Wong, Rice and Kolter, "Fast is better than free" (ICLR 2020):
    # start uniform in +-eps, one step of 1.25 eps, projected onto the eps-ball
    "fgsm_rs": {"steps": 1, "alpha_eps": 1.25, "random_start": True},
    # N-FGSM, de Jorge et al., "Make some noise" (NeurIPS 2022): start uniform in +-2 eps, one
    # step of eps, not projected (the noise itself guards against catastrophic overfitting)
    "nfgsm": {"steps": 1, "alpha_eps": 1.0, "random_start": True, "start_scale": 2.0,
              "project": False},
    # PGD-2 with the reference's step rule (2.5 eps / 2 = 1.25 eps per step) from a random start
    "pgd2": {"steps": 2, "alpha_eps": 1.25, "random_start": True},
}


CLEAN = "clean"  # step_passes' name for training without the adversarial terms


@dataclass(frozen=True)
class StepPasses:
    """Passes through the model per normal image in one training step (its pseudo-anomaly
    included), as `train_step` runs them with pgray's PGD."""

    attack: int  # forward + backward to the input (frozen weights): both batches' attack steps
    # forward only: each restart's last iterate judged (keep_best or restarts > 1), and the
    # clean image's units that an lse surrogate measures its temperature in (one per attack)
    judge: int
    update: int  # forward + backward through the weights: the loss's 4 batches (2 when clean)

    @property
    def passes(self) -> int:
        """Forward + backward passes (the `passes_per_image` every epoch reports)."""
        return self.attack + self.update

    @property
    def forwards(self) -> int:
        """Forward passes, the judging ones included."""
        return self.attack + self.judge + self.update


def step_passes(method: str = "pgd", steps: int = 10, restarts: int = 1,
                keep_best: bool = False, surrogate: bool = False) -> StepPasses:
    """The passes of one training step for a train.attack_method (or CLEAN). `steps`,
    `restarts` and `keep_best` are train.attack's, used by `pgd` only: the fast methods fix
    their own (TRAIN_ATTACKS); `surrogate` (train.attack's is not none) holds for every method.
    At the reference's PGD-10: 2 x 10 attack passes + 4 = 24. The objective (mask or
    image_score, train.image_score_share) changes no count, nor does train.trades_beta: its
    KL reads the clean and attacked logits of the one update forward."""
    if method == CLEAN:
        return StepPasses(attack=0, judge=0, update=2)
    preset = TRAIN_ATTACKS[method]
    if preset:
        steps, restarts, keep_best = preset["steps"], 1, False
    judged = keep_best or restarts > 1
    # two attacked batches (normal and pseudo-anomalous), one image each per normal image
    judge = (2 * restarts if judged else 0) + (2 if surrogate else 0)
    return StepPasses(attack=2 * steps * restarts, judge=judge, update=4)


def step_passes_of(cfg: ExperimentConfig) -> StepPasses:
    """`step_passes` of an experiment's training step."""
    if not cfg.train.adversarial:
        return step_passes(CLEAN)
    attack = cfg.train.attack
    return step_passes(cfg.train.attack_method, attack.steps, attack.restarts,
                       attack.keep_best, surrogate=attack.surrogate != "none")


def passes_per_image(cfg: ExperimentConfig) -> float:
    """Forward + backward passes per normal image and step: both batches' attacks, then the
    update of 4 batches (2 without the adversarial terms)."""
    return float(step_passes_of(cfg).passes)


# The most of a run's compute the held-out proxy takes when train.proxy_every is unset.
PROXY_SHARE = 0.10


def proxy_passes_per_pair(cfg: ExperimentConfig) -> float:
    """Passes of one proxy over one held-out pair (a normal and its pseudo-anomaly): the
    clean forward, then each of the two short attacks (proxy_steps) and its scoring forward.
    Forward-only passes are counted as whole ones: the estimate errs towards fewer proxies."""
    return 2.0 * (1 + 2 * (cfg.train.proxy_steps + 1))


def proxy_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether 0-based `epoch` runs the held-out proxy: the first (it starts the curve, and
    Tune fixes its table's columns from the first result it sees), the last, and every
    `every`-th."""
    return epoch == 0 or epoch + 1 == epochs or (epoch + 1) % every == 0


def proxies_run(epochs: int, every: int) -> int:
    return sum(proxy_due(e, epochs, every) for e in range(epochs))


def default_proxy_every(cfg: ExperimentConfig, *, n_pairs: int | None = None,
                        n_train: int | None = None) -> int:
    """The smallest interval whose proxies (the first and last epochs' included) cost at most
    PROXY_SHARE of the training epochs' time. One proxy costs `ratio` epochs: its passes over
    a training epoch's. Without the set's sizes, they follow from train.holdout_fraction. At
    the reference (PGD-10 training, 24 passes per image; proxy_steps 10, proxy_repeats 4,
    holdout 0.1) a proxy costs 0.85 epochs: over 100 epochs, every 10 (11 proxies). A run too
    short for that gets the first and last alone."""
    train = cfg.train
    if n_pairs is None or n_train is None:
        n_train = 1_000_000
        n_pairs = round(n_train * train.proxy_repeats * train.holdout_fraction
                        / (1 - train.holdout_fraction))
    epoch_images = n_train
    if train.max_steps_per_epoch is not None:
        epoch_images = min(n_train, train.max_steps_per_epoch * train.batch_size)
    ratio = (n_pairs * proxy_passes_per_pair(cfg)
             / max(1.0, epoch_images * step_passes_of(cfg).passes))
    epochs = train.epochs
    return next((every for every in range(1, epochs + 1)
                 if proxies_run(epochs, every) * ratio <= PROXY_SHARE * epochs + 1e-9),
                max(1, epochs))
