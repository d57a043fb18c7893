"""What every part of the local cluster shares: where the software is, the tool's error, and
processes (started in sessions of their own, stopped by id with everything they started),
free ports and waiting for a service to answer."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = Path(sys.executable).parent  # the environment that has ray, weed and mlflow


class ClusterSetupError(RuntimeError):
    """Something this tool could not do; the message names what and where to look."""


# --- processes ---------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def alive(pid: int | None) -> bool:
    st = None if not pid else _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def family(pid: int) -> set[int]:
    """`pid`, every process it started (down the parent chain) and every process still in
    its session: what stopping one service or node must end."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] not in ("Z", "X"):
            table[int(entry.name)] = (st[1], st[2])
    members = {pid} | {p for p, (_, sid) in table.items() if sid == pid}
    grew = True
    while grew:
        children = {p for p, (ppid, _) in table.items() if ppid in members} - members
        grew = bool(children)
        members |= children
    return {p for p in members if p in table or p == pid}


def stop_family(pid: int, first: int = signal.SIGTERM, leader_only: bool = False,
                grace_s: float = 15.0) -> None:
    """Signal a process (or its whole family), wait, then SIGKILL whatever is left."""
    members = family(pid)
    for p in ([pid] if leader_only else members):
        _signal(p, first)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in members):
        time.sleep(0.2)
    for p in family(pid) | members:
        _signal(p, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float, log: Path | None = None,
             pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            break
        time.sleep(0.5)
    tail = ""
    if log is not None and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    state = "exited" if pid is not None and not alive(pid) else f"not ready after {timeout_s:g} s"
    raise ClusterSetupError(f"{what} {state} (log: {log}){tail}")


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
