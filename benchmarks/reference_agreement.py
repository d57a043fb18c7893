"""pgray against the PatchGuard reference code (github.com/rohban-lab/PatchGuard), same weights.

    .venv/bin/python benchmarks/reference_agreement.py --reference PATH [--checkpoint REF.pth]
        [--images 4] [--seed 0] [--data ROOT --dataset mvtec --category C --eps 2 8 --steps 100]

PATH is a local checkout of the reference; the script imports its `patchguard.py` (the model),
`loss.py` (the loss) and `attack.py` (the PGD), nothing else. It builds the reference model
with its own defaults (DINOv2 ViT-S/14 at 224, features of block 12, a discriminator block of
4 heads and width 2048), with random weights from --seed or the reference state dict
--checkpoint, and pgray's model from that state dict (`load_reference_state_dict`). Then, on
--images random images in [0, 1]:

1. logits: the largest |difference| of the patch logits (docs/method.md, "What has been
   measured": "within 2e-7");
2. PGD-10 at 8/255 (the training attack) by the reference's `pgd_attack` and by pgray's: how
   many pixels differ and by how much;
3. the loss on half normal images, half images with a labelled square: each side's patch BCE
   and attention term (docs: "about 4e-6 against a patch BCE of about 190");
4. with --data (a test split in pgray's layouts) and the checkpoint it belongs to: image AUROC
   clean, under the protocol (the reference's `pgd_attack`, --steps) and under PGD on the
   signed image score (pgray's `objective: image_score`), at each --eps (docs: "0.37 at 2/255
   and 0.57 at 8/255 ... against 0.06 and 0.00", on one small model).

Without PATH, or without the three files in it, the script says which and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

REFERENCE_FILES = ("patchguard.py", "loss.py", "attack.py")
# The reference's defaults (its main.py), as its PatchGuard(args, device) reads them.
REFERENCE_ARGS = {"hf_path": "vit_small_patch14_dinov2.lvd142m", "feature_layers": [12],
                  "reg_layers": [6, 9, 12], "image_size": 224, "hidden_dim": 2048,
                  "dsc_layers": 1, "dsc_heads": 4}
TRAIN_EPS, TRAIN_STEPS = 8.0, 10


class ReferenceMissing(Exception):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what each number is.")
    p.add_argument("--reference", required=True, type=Path,
                   help="a local checkout of github.com/rohban-lab/PatchGuard")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a state dict saved by the reference (default: random weights)")
    p.add_argument("--images", type=int, default=4, help="random images for 1-3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=str, default=None, help="dataset root for the AUROCs (4)")
    p.add_argument("--dataset", default="mvtec")
    p.add_argument("--category", default=None)
    p.add_argument("--max-test", type=int, default=None,
                   help="N test images only, half normal and half anomalous")
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 8.0], help="in 1/255")
    p.add_argument("--steps", type=int, default=100, help="PGD steps of the AUROC attacks")
    return p.parse_args(argv)


def import_reference(path: Path) -> dict[str, ModuleType]:
    """The reference's modules, imported from the checkout; a clear error if it is not one."""
    if not path.is_dir():
        raise ReferenceMissing(f"--reference {path}: no such directory (clone"
                               " https://github.com/rohban-lab/PatchGuard there)")
    missing = [f for f in REFERENCE_FILES if not (path / f).is_file()]
    if missing:
        raise ReferenceMissing(f"--reference {path}: not a PatchGuard reference checkout,"
                               f" missing {', '.join(missing)}")
    sys.path.insert(0, str(path.resolve()))
    try:
        return {name: importlib.import_module(name) for name in ("patchguard", "loss", "attack")}
    except ImportError as err:
        raise ReferenceMissing(f"--reference {path}: importing it failed: {err}") from err
    finally:
        sys.path.pop(0)


def build_models(ref: dict[str, ModuleType], checkpoint: Path | None, seed: int):
    """(the reference's model, pgray's), on the same weights, both in eval mode on the CPU."""
    import torch

    from pgray.config import ModelConfig
    from pgray.core.checkpoint import load_reference_state_dict
    from pgray.core.model import PatchGuard

    torch.manual_seed(seed)
    theirs = ref["patchguard"].PatchGuard(SimpleNamespace(**REFERENCE_ARGS), torch.device("cpu"))
    accept_new_timm_arguments(theirs)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        theirs.load_state_dict(state.get("state_dict", state), strict=True)
    ours = PatchGuard(ModelConfig(pretrained=False, weights=None))
    load_reference_state_dict(ours, theirs.state_dict())
    return theirs.eval(), ours.eval()


def accept_new_timm_arguments(model) -> None:
    """The reference replaces the attention forward of some blocks by its own `forward(x)`;
    timm releases after the one it was written for call it with `attn_mask`/`is_causal`
    keywords (None / False for a ViT). Drop those, leave the reference's computation as is."""
    for block in model.feature_extractor.pretrained_model.blocks:
        replaced = block.attn.__dict__.get("forward")  # only the blocks it patched
        if replaced is not None:
            block.attn.forward = lambda x, *_, _f=replaced, **__: _f(x)


def random_batch(n: int, seed: int, patch: int, grid: int, size: int):
    """n random images; the second half carries a labelled square (a pseudo-anomaly's labels)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    labels = torch.zeros(n, grid, grid)
    labels[n // 2:, grid // 4: grid // 2, grid // 4: grid // 2] = 1.0
    return x, labels.flatten(1)


def logit_agreement(theirs, ours, x) -> float:
    import torch

    with torch.no_grad():
        return (theirs(x) - ours(x)).abs().max().item()


def pgd_agreement(ref, theirs, ours, x, labels) -> dict[str, float]:
    from pgray.attacks.pgd import attack
    from pgray.config import AttackConfig

    adv_theirs = ref["attack"].pgd_attack(theirs, x, labels, TRAIN_EPS / 255, TRAIN_STEPS)
    adv_ours = attack(ours, x, labels, AttackConfig(eps=TRAIN_EPS, steps=TRAIN_STEPS))
    diff = (adv_theirs - adv_ours).abs()
    return {"pixels_differing": int((diff > 0).sum()), "pixels": diff.numel(),
            "max_diff_255": diff.max().item() * 255}


def loss_terms(ref, theirs, ours, x, labels) -> dict[str, float]:
    """Each side's patch BCE and attention term on the same batch (reference weights 0.005,
    0.01, 0.05 on blocks 6, 9, 12, lambda 1, the element-wise mean)."""
    import torch

    from pgray.config import LossConfig
    from pgray.core.losses import patchguard_loss

    criterion = ref["loss"].Loss("KL_divergence", torch.device("cpu"), theirs.num_patches)
    with torch.no_grad():
        features, maps = theirs.feature_extractor(x, True)
        scores = theirs.discriminator(features)
        their_reg = float(criterion.reg(maps))
        their_total = float(criterion(scores, labels, maps))
        cfg = LossConfig()
        with ours.capture_attention(cfg.attention_layers) as captured:
            logits = ours(x)
        _, parts = patchguard_loss(logits, labels, captured, cfg, ours.num_prefix_tokens)
    return {"reference_bce": their_total - their_reg, "reference_attention": their_reg,
            "pgray_bce": float(parts["bce"]), "pgray_attention": float(parts["attn_reg"])}


def protocol_aurocs(ref, theirs, ours, args) -> list[dict[str, Any]]:
    """Image AUROC clean, under the protocol (the reference's PGD) and under PGD on the
    signed image score (pgray's), on a test split."""
    import torch
    import torch.nn.functional as F

    from pgray.attacks.pgd import attack
    from pgray.config import AttackConfig, DataConfig
    from pgray.core.metrics import image_auroc
    from pgray.data.dataset import load_split

    data = load_split(DataConfig(dataset=args.dataset, root=args.data, category=args.category),
                      "test", img_size=REFERENCE_ARGS["image_size"])
    items = [data[i] for i in balanced_subset(data.labels, args.max_test)]
    x = torch.stack([it["image"] for it in items])
    image_labels = torch.stack([it["label"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    units = (F.max_pool2d(masks, ours.patch_size).flatten(1) > 0).float()  # any pixel

    def auroc(images) -> float:
        with torch.no_grad():
            return image_auroc(ours.image_scores(ours(images)), image_labels)

    rows = [{"attack": "clean", "eps": 0.0, "steps": 0, "image_auroc": auroc(x)}]
    for eps in args.eps:
        protocol = ref["attack"].pgd_attack(theirs, x, units, eps / 255, args.steps)
        signed = attack(ours, x, units, AttackConfig(eps=eps, steps=args.steps,
                                                     objective="image_score"),
                        image_labels=image_labels)
        rows.append({"attack": "protocol (reference pgd_attack)", "eps": eps,
                     "steps": args.steps, "image_auroc": auroc(protocol)})
        rows.append({"attack": "signed image score (pgray)", "eps": eps, "steps": args.steps,
                     "image_auroc": auroc(signed)})
    return rows


def balanced_subset(labels: list[int], limit: int | None) -> list[int]:
    """Indices of up to `limit` test images, half normal and half anomalous where there are
    enough (the AUROC needs both); all of them without a limit."""
    if limit is None:
        return list(range(len(labels)))
    normal = [i for i, y in enumerate(labels) if y == 0]
    anomalous = [i for i, y in enumerate(labels) if y != 0]
    take = min(len(anomalous), max(limit - min(len(normal), limit // 2), limit // 2))
    return sorted(normal[: limit - take] + anomalous[:take])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data is not None and (args.category is None or args.checkpoint is None):
        print("error: --data needs --category and the --checkpoint trained on it",
              file=sys.stderr)
        return 2
    try:
        ref = import_reference(args.reference)
    except ReferenceMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    torch.set_grad_enabled(True)
    theirs, ours = build_models(ref, args.checkpoint, args.seed)
    weights = args.checkpoint or f"random (seed {args.seed})"
    print(f"reference: {args.reference.resolve()}; weights: {weights}")
    x, labels = random_batch(args.images, args.seed, ours.patch_size, ours.grid[0],
                             REFERENCE_ARGS["image_size"])
    print(f"1. max |logit difference| over {args.images} random images:"
          f" {logit_agreement(theirs, ours, x):.3g}")
    pgd = pgd_agreement(ref, theirs, ours, x, labels)
    print(f"2. PGD-{TRAIN_STEPS} at {TRAIN_EPS:g}/255: {pgd['pixels_differing']} of"
          f" {pgd['pixels']} pixel values differ, by at most {pgd['max_diff_255']:.3g}/255")
    terms = loss_terms(ref, theirs, ours, x, labels)
    print(f"3. loss: reference BCE {terms['reference_bce']:.4g}, attention term"
          f" {terms['reference_attention']:.3g}; pgray BCE {terms['pgray_bce']:.4g}, attention"
          f" term {terms['pgray_attention']:.3g}")
    if args.data is not None:
        print(f"4. image AUROC on {args.dataset}/{args.category} (test split):")
        for row in protocol_aurocs(ref, theirs, ours, args):
            print(f"   {row['attack']:<34} eps {row['eps']:g}/255, {row['steps']} steps:"
                  f" {row['image_auroc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
