"""Foreground masks for the train images: Grad-CAM (as PatchGuard's authors describe) or a
weight-free colour method.

Output: `<layout's foreground dir>/<image stem>.png`, 8-bit 0/255, the image's size, written
atomically. Existing masks are kept unless `force` is set: they may be the reference's
published masks, which a run should never silently replace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pgray.data.imageio import load_rgb, write_png_atomic
from pgray.data.registry import get_layout
from pgray.data.samples import find_foreground
from pgray.errors import CheckpointError, DatasetError

Method = Literal["gradcam", "otsu"]
METHODS: tuple[str, ...] = ("gradcam", "otsu")
CAM_INPUT = 224  # ResNet-18's ImageNet resolution
CAM_BATCH = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ForegroundReport:
    written: int = 0
    skipped: int = 0
    empty: int = 0  # masks that came out empty and were replaced by all-ones


# ----------------------------------------------------------------------------- shared cleanup


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of `values` (Otsu, 1979)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def clean_mask(mask: np.ndarray, keep_ratio: float = 0.2, open_iter: int = 0) -> np.ndarray:
    """Drop specks, keep the large components (>= keep_ratio x the largest), fill holes."""
    from scipy import ndimage

    if open_iter:
        mask = ndimage.binary_opening(mask, iterations=open_iter)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= keep_ratio * areas.max()) + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


# ----------------------------------------------------------------------------- otsu


def _border(arr: np.ndarray, width: int) -> np.ndarray:
    ring = np.zeros(arr.shape[:2], bool)
    ring[:width, :] = ring[-width:, :] = True
    ring[:, :width] = ring[:, -width:] = True
    return ring


def otsu_foreground(rgb: np.ndarray) -> np.ndarray:
    """Foreground of an object on a plain background, without any weights.

    The border strip is taken as background. A planar colour trend fitted to it removes uneven
    lighting; each pixel's Mahalanobis distance from the border's residual colour distribution
    is then split with Otsu's threshold (on the log distance, which is far from Gaussian), and
    cleaned up: keep the large components, fill holes.
    """
    h, w = rgb.shape[:2]
    img = rgb.astype(np.float64) / 255.0
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), yy.ravel() / h, xx.ravel() / w], axis=1)
    ring = _border(img, max(1, round(0.05 * min(h, w)))).ravel()
    pixels = img.reshape(-1, 3)
    coef, *_ = np.linalg.lstsq(design[ring], pixels[ring], rcond=None)
    resid = pixels - design @ coef
    cov = np.cov(resid[ring].T) + np.eye(3) * 1e-4  # floor: a perfectly flat border is fine
    dist = np.einsum("ij,jk,ik->i", resid, np.linalg.inv(cov), resid)
    score = np.log1p(dist).reshape(h, w)
    return clean_mask(score > otsu_threshold(score))


# ----------------------------------------------------------------------------- grad-cam


def default_weights_path() -> Path:
    """Where torchvision caches its ImageNet ResNet-18 weights."""
    import torch
    from torchvision.models import ResNet18_Weights

    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    )


def load_resnet18(weights: str | Path | None) -> Any:
    import torch
    from torchvision.models import resnet18

    path = Path(weights) if weights else default_weights_path()
    if not path.is_file():
        raise CheckpointError(
            f"{path}: ResNet-18 weights not found; Grad-CAM needs ImageNet ResNet-18 weights: pass "
            "--weights PATH (a torchvision resnet18 state_dict) or place the file in torchvision's "
            f"cache dir ({default_weights_path().parent}), or use --method otsu (no weights)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = resnet18(weights=None)
        model.load_state_dict(state)
    except Exception as err:  # pickle, zip and key-mismatch errors all mean "not these weights"
        raise CheckpointError(f"{path}: not a torchvision resnet18 state_dict ({err})") from None
    return model.eval()


class GradCamForeground:
    """Grad-CAM of the top ImageNet class at ResNet-18's last stage (layer4), Otsu-thresholded
    and cleaned (a light opening removes CAM speckle)."""

    def __init__(self, weights: str | Path | None):
        from pytorch_grad_cam import GradCAM

        self.model = load_resnet18(weights)
        self.cam = GradCAM(model=self.model, target_layers=[self.model.layer4])

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        batch = []
        for rgb in images:
            small = Image.fromarray(rgb).resize((CAM_INPUT, CAM_INPUT), Image.Resampling.LANCZOS)
            t = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1)
            batch.append((t - mean) / std)
        cams = self.cam(input_tensor=torch.stack(batch), targets=None)  # top class per image
        out = []
        for rgb, cam in zip(images, cams):
            h, w = rgb.shape[:2]
            heat = np.asarray(
                Image.fromarray(cam.astype(np.float32), "F").resize(
                    (w, h), Image.Resampling.BILINEAR
                )
            )
            out.append(clean_mask(heat > otsu_threshold(heat), open_iter=1))
        return out


# ----------------------------------------------------------------------------- driver


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def generate_foreground(
    dataset: str,
    root: str | Path,
    category: str | None = None,
    method: Method = "gradcam",
    weights: str | Path | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> ForegroundReport:
    """Write foreground masks for the train images of one category (or all present ones)."""
    if method not in METHODS:
        raise DatasetError(f"--method must be one of {list(METHODS)}, got {method!r}")
    layout = get_layout(dataset)
    root = layout.check_root(root)
    opts = layout.check_options(options)
    if category is not None:
        categories = [category]
    else:
        present = layout.available_categories(root)
        categories = [c for c in present if c not in layout.textures]
        if skipped := [c for c in present if c in layout.textures]:
            log(f"skipping texture categories (whole image is foreground): {', '.join(skipped)}")
    if not categories:
        raise DatasetError(f"{root}: no {dataset} object categories found")
    report = ForegroundReport()
    segment: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    for cat in categories:
        out_dir = layout.foreground_dir(root, cat, opts)
        todo = []
        for image in layout.foreground_targets(root, cat, opts):
            existing = find_foreground(out_dir, image)
            if existing is not None and not force:
                report.skipped += 1
                continue
            # Overwrite under the existing name, which the layouts read first (the reference
            # names VisA masks like the JPEG image); new masks are `<stem>.png`.
            todo.append((image, existing or out_dir / f"{image.stem}.png"))
        if todo and segment is None:
            # Load the CNN only when something is to be written.
            segment = GradCamForeground(weights) if method == "gradcam" else _each(otsu_foreground)
        for chunk in _chunks(todo, CAM_BATCH):
            assert segment is not None
            masks = segment([np.asarray(load_rgb(img)) for img, _ in chunk])
            for (_, target), mask in zip(chunk, masks):
                if not mask.any():  # nothing found: the whole image is safer than nothing
                    mask = np.ones_like(mask)
                    report.empty += 1
                write_png_atomic(target, mask.astype(np.uint8) * 255)
                report.written += 1
        log(f"{cat or root.name}: {len(todo)} mask(s) written to {out_dir}")
    if report.skipped:
        log(f"skipped {report.skipped} existing mask(s); pass --force to overwrite them")
    if report.empty:
        log(f"warning: {report.empty} mask(s) came out empty and were written as all-ones")
    return report


def _each(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    return lambda images: [fn(img) for img in images]
