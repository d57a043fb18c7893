"""The node's cache of decoded images: every item of a split decoded and resized once.

Decoding a 700-1024 px PNG and Lanczos-resizing it costs tens of milliseconds; an adversarial
training step on a GPU consumes hundreds of images a second. So the first process of a node
that needs a split at a size decodes it into two uint8 arrays, memory-mapped by every process
that reads it afterwards (benchmarks/data_path.py measures both paths):

- `images.npy`: (N, S, S, 3), the Lanczos-resized RGB pixels;
- `masks.npy`: (N, S, S), bit flags per pixel: MASK_BIT the ground-truth mask by the split's
  resize rule, COVER_BIT its cover (what unit labels come from), FOREGROUND_BIT the
  foreground mask;
- `meta.json`: the format version, size, rule and the source listing.

An entry lives in `<PGRAY_CACHE>/decoded/<key>-<digest>/`: the key names the source files and
the decoding (size, mask rule, format version), the digest their sizes and modification times,
so a rewritten, added or removed file makes another entry (checked at every use: one stat per
file). Several processes of a node starting together build it once (a lock beside the entries),
and a reader sees no entry or the whole one (built under a temporary name, then renamed);
entries of an older listing of the same files are removed then.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pgray.data.decode import decode_sample
from pgray.data.samples import Sample

FORMAT_VERSION = 1
MASK_BIT, COVER_BIT, FOREGROUND_BIT = 1, 2, 4


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _stat(path: Path | None) -> list | None:
    if path is None:
        return None
    info = Path(path).stat()
    return [info.st_size, info.st_mtime_ns]


def _files(sample: Sample) -> list[str | None]:
    return [str(Path(p).resolve()) if p is not None else None
            for p in (sample.image_path, sample.mask_path, sample.foreground_path)]


class DecodedSplit:
    """The cache entry of a list of samples: row(i) is sample i's (rgb, flags) pair, read from
    the memory-mapped arrays (opened lazily in each process, never pickled)."""

    def __init__(self, folder: Path, rows: list[int]):
        self.folder = folder
        self.rows = rows
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "rows": self.rows, "_arrays": None}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.load(self.folder / "images.npy", mmap_mode="r"),
                            np.load(self.folder / "masks.npy", mmap_mode="r"))
        return self._arrays

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 (S, S, 3), flags uint8 (S, S)) of sample `index`, copied out of the map."""
        images, masks = self.arrays()
        row = self.rows[index]
        return np.array(images[row]), np.array(masks[row])


def decoded_split(samples: Sequence[Sample], img_size: int, mask_resize: str,
                  cache_dir: Path) -> DecodedSplit:
    """The cache entry of `samples` at `img_size` (built when missing or out of date). The
    same image listed twice (the proxy's repeats) is stored once."""
    unique = sorted({tuple(_files(s)): s for s in samples}.items(),
                    key=lambda pair: [name or "" for name in pair[0]])
    files = [list(k) for k, _ in unique]
    key = _digest([FORMAT_VERSION, img_size, mask_resize, files])
    listing = [[_stat(s.image_path), _stat(s.mask_path), _stat(s.foreground_path)]
               for _, s in unique]
    folder = Path(cache_dir) / "decoded"
    target = folder / f"{key}-{_digest(listing)}"
    row_of = {k: i for i, (k, _) in enumerate(unique)}
    rows = [row_of[tuple(_files(s))] for s in samples]
    if not (target / "meta.json").is_file():
        from pgray.io import file_lock, publish_dir

        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f".{key}.lock"):
            if not (target / "meta.json").is_file():  # another process may have built it
                meta = {"version": FORMAT_VERSION, "img_size": img_size,
                        "mask_resize": mask_resize, "files": files, "listing": listing}
                publish_dir(lambda tmp: _build(tmp, [s for _, s in unique], img_size,
                                               mask_resize, meta), target)
                for old in folder.glob(f"{key}-*"):  # entries of an older listing
                    if old != target:
                        shutil.rmtree(old, ignore_errors=True)
    return DecodedSplit(target, rows)


def _build(tmp: Path, samples: list[Sample], img_size: int, mask_resize: str,
           meta: dict) -> None:
    from pgray.io import write_json

    shape = (len(samples), img_size, img_size)
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (*shape, 3))
    masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, shape)
    for i, sample in enumerate(samples):
        rgb, mask, cover, foreground = decode_sample(sample, img_size, mask_resize)
        images[i] = rgb
        masks[i] = mask * MASK_BIT | cover * COVER_BIT | foreground * FOREGROUND_BIT
    images.flush()
    masks.flush()
    del images, masks
    write_json(tmp / "meta.json", meta)  # last: an entry with meta.json is complete
