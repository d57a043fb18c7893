"""Boot one worker node inside its own mount namespace (run by `unshare --mount`), then become
its `ray start` process.

What the node sees afterwards is what a machine of a real cluster sees: its own /tmp, its own
home and work folder, none of the head's or the other nodes' files, and the shared datasets at
the same paths as everywhere else, read-only (as an NFS export would give them).

Every source folder is opened before anything is mounted: a folder under /tmp is gone from view
once the private /tmp covers it, but an open descriptor still reaches it (/proc/self/fd/N).

Usage (by localcluster.py): python node_boot.py SPEC.json
SPEC: {"binds": [[source, target], ...], "hide": [folder, ...], "datasets": [folder, ...],
       "cwd": folder, "argv": [...], "env": {...}}
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0) -> None:
    def raw(text):
        return None if text is None else text.encode()

    if _libc.mount(raw(source), raw(target), raw(fstype), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def open_folder(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY)


def bind(fd: int, target: str, *, read_only: bool = False) -> None:
    os.makedirs(target, exist_ok=True)
    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    if read_only:  # a bind mount takes its read-only flag only on a remount
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.close(fd)


def boot(spec: dict) -> None:
    # Nothing mounted here may leak back to the host's namespace.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    binds = [(open_folder(src), dst) for src, dst in spec["binds"]]
    datasets = [(open_folder(path), path) for path in spec["datasets"]]
    for fd, target in binds:
        bind(fd, target)
    for folder in spec["hide"]:
        if os.path.isdir(folder):
            mount("tmpfs", folder, "tmpfs", 0)
    for fd, path in datasets:
        bind(fd, path, read_only=True)
    os.chdir(spec["cwd"])
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        boot(json.load(f))
