"""Datasets kept in object storage (`s3://bucket/prefix`, `gs://...`): each machine copies one
into its own cache once and reads it there, which is what teams without a shared filesystem do.

The copy is named after the URI and a digest of the bucket's listing (every key, size and
modification time), so it is checked against the listing at every use: a dataset changed in the
bucket is staged again, an unchanged one is a single LIST request. Several processes of a node
starting together download it once (a lock beside the cache entry), and a reader sees no copy or
the whole one (built under a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pgray.errors import DatasetError, first_line

SCHEMES = ("s3://", "gs://", "gcs://")


def is_remote(root: str) -> bool:
    return root.startswith(SCHEMES)


def listing(uri: str) -> list[tuple[str, int, float]]:
    """(relative key, size, mtime) of every object under the URI, sorted."""
    from pyarrow import fs

    try:
        store, base = fs.FileSystem.from_uri(uri)
        infos = store.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as err:
        raise DatasetError(f"dataset root {uri} cannot be listed: {first_line(err)}") from None
    files = [(i.path[len(base):].lstrip("/"), i.size,
              i.mtime.timestamp() if i.mtime is not None else 0.0)
             for i in infos if i.type == fs.FileType.File]
    if not files:
        raise DatasetError(f"dataset root {uri} holds no files")
    return sorted(files)


def stage(uri: str, cache: Path) -> Path:
    """The dataset at `uri` as a local folder under `cache` (downloaded when the bucket's
    listing differs from the last copy's)."""
    files = listing(uri)
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    name = hashlib.sha256(uri.encode()).hexdigest()[:12]
    folder = cache / "datasets"
    target = folder / f"{name}-{digest}"
    if target.is_dir():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    from pgray.io import file_lock, publish_dir

    with file_lock(folder / f".{name}.lock"):
        if not target.is_dir():  # another process of this node may have staged it meanwhile
            publish_dir(lambda tmp: _download(uri, files, tmp), target)
            for old in folder.glob(f"{name}-*"):  # copies of an older listing
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
    return target


def _download(uri: str, files: list[tuple[str, int, float]], dest: Path) -> None:
    from pyarrow import fs

    store, base = fs.FileSystem.from_uri(uri)
    for key, size, _ in files:
        local = dest / key
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.copy_files(f"{base}/{key}", str(local), source_filesystem=store,
                          destination_filesystem=fs.LocalFileSystem())
        except (OSError, ValueError) as err:
            raise DatasetError(f"staging {uri}/{key}: {first_line(err)}") from None
        if local.stat().st_size != size:
            raise DatasetError(f"staging {uri}/{key}: got {local.stat().st_size} bytes of"
                               f" {size}")
