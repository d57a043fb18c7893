"""Checks on every node before anything is submitted: can each machine that will train or
evaluate read the run's storage and every dataset root?

On one machine nothing is asked (the driver's own checks cover it). On a cluster the driver
writes a marker into the storage and a task pinned to each node that can run work reads it
back and looks for the dataset roots; a node that cannot is named in one error, instead of a
training failing on it minutes later. Nodes that join afterwards (autoscaling) are not asked:
their failures surface in the work itself, with errors that name the storage or the root.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from pgray.errors import ClusterError, DatasetError, StorageError, first_line

PROBE_TIMEOUT_S = 120.0


def is_uri(path: str) -> bool:
    return "://" in path


def write_marker(storage: str) -> str:
    """Write a small file into the storage (local folder or URI); returns its location. An
    unwritable storage (no credentials, no bucket, read-only) fails here, naming it."""
    from pyarrow import fs

    marker = f"{storage.rstrip('/')}/.pgray-probe-{uuid.uuid4().hex[:12]}"
    try:
        filesystem, path = fs.FileSystem.from_uri(marker if is_uri(marker)
                                                  else Path(marker).as_uri())
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as out:
            out.write(b"pgray")
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise StorageError(f"storage {storage} cannot be written from the driver:"
                           f" {first_line(err)}{_credentials_hint(storage)}") from None
    return marker


def remove_marker(marker: str) -> None:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(marker if is_uri(marker)
                                                  else Path(marker).as_uri())
        filesystem.delete_file(path)
    except (OSError, ValueError):
        pass


def blame_storage(storage: str, err: BaseException) -> None:
    """After a run failed with `err`: if its storage does not answer now, raise the error that
    says so (the likely cause, and what to do); else return and let `err` speak."""
    try:
        remove_marker(write_marker(storage))
    except StorageError:
        raise StorageError(
            f"the run failed while its storage {storage} does not answer"
            f" ({first_line(err)[:300]}); once the storage is back, continue with --resume"
            " (finished trainings are kept)") from None


def node_problems(marker: str | None, roots: list[str]) -> list[str]:
    """What this node cannot see (runs on each node)."""
    from pyarrow import fs

    problems = []
    if marker is not None:
        try:
            filesystem, path = fs.FileSystem.from_uri(marker if is_uri(marker)
                                                      else Path(marker).as_uri())
            with filesystem.open_input_stream(path) as f:
                f.read()
        except (OSError, ValueError) as err:
            storage = marker.rsplit("/", 1)[0]
            problems.append(f"storage {storage} is not readable ({first_line(err)})")
    for root in roots:
        if is_uri(root):
            try:
                filesystem, path = fs.FileSystem.from_uri(root)
                info = filesystem.get_file_info(path)
                if info.type == fs.FileType.NotFound:
                    problems.append(f"dataset root {root} does not exist")
            except (OSError, ValueError) as err:
                problems.append(f"dataset root {root} is not readable ({first_line(err)})")
        elif not Path(root).is_dir():
            problems.append(f"dataset root {root} is missing")
    return problems


def join_checked(address: str | None, uri: str, storage: str | None, roots: list[str], *,
                 worker_logs: bool = True) -> str:
    """Join Ray (`pgray.distributed.cluster.connect`), then refuse a tracking store some node
    cannot log to, and a storage or dataset root some node cannot use: what every run checks
    before it submits anything. Returns what was joined."""
    from pgray.distributed.cluster import check_tracking_reachable, connect

    joined = connect(address, worker_logs=worker_logs)
    check_tracking_reachable(uri)
    check_nodes(storage, [r for r in roots if r])
    return joined


def check_nodes(storage: str | None, roots: list[str]) -> None:
    """Refuse, before any work is submitted, a storage or a dataset root that some node which
    can run work does not see. `storage`: where checkpoints go (None: nothing is trained)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and (
        n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)]
    here = ray.get_runtime_context().get_node_id()
    roots = sorted(set(roots))
    one_machine = not nodes or all(n["NodeID"] == here for n in nodes)
    if storage and is_uri(storage) and one_machine:
        remove_marker(write_marker(storage))  # credentials and bucket, from the driver
    if one_machine:
        return  # the driver's own checks have seen the rest
    marker = write_marker(storage) if storage else None
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(node_problems)
        asks = {n["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(marker, roots) for n in nodes}
        ready, _ = ray.wait(list(asks.values()), num_returns=len(asks),
                            timeout=PROBE_TIMEOUT_S)
        found = {ip: _answer(ref, ref in ready) for ip, ref in asks.items()}
    finally:
        if marker is not None:
            remove_marker(marker)
    bad = {ip: problems for ip, problems in found.items() if problems}
    if bad:
        _refuse(bad, storage, len(nodes))


def _answer(ref, ready: bool) -> list[str]:
    """A node's problems; a node that left while it was asked (stopped, scaled down) has none
    to report: no work will land there."""
    import ray

    if not ready:
        return [f"no answer in {PROBE_TIMEOUT_S:g} s"]
    try:
        return ray.get(ref)
    except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError,
            ray.exceptions.WorkerCrashedError):
        return []


def _refuse(bad: dict[str, list[str]], storage: str | None, n_nodes: int) -> None:
    where = "; ".join(f"node {ip}: {', '.join(problems)}" for ip, problems in sorted(bad.items()))
    storage_bad = any(p.startswith("storage") for problems in bad.values() for p in problems)
    if storage_bad and storage and not is_uri(storage):
        raise StorageError(
            f"{where}. On a cluster of {n_nodes} nodes, --storage must be a folder every node"
            " mounts at the same path (NFS) or an s3:// / gs:// URI (checkpoints written on"
            " one node are read on another)")
    if storage_bad:
        raise StorageError(f"{where}{_credentials_hint(storage or '')}")
    raise DatasetError(
        f"{where}. Every node needs each dataset at the same path (a shared, read-only mount)"
        " or an s3:// root, which each node stages into its own cache")


def _credentials_hint(storage: str) -> str:
    if storage.startswith("s3://"):
        return ("; every node needs S3 credentials and the endpoint (AWS_ACCESS_KEY_ID,"
                " AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for a store other than AWS)")
    if storage.startswith(("gs://", "gcs://")):
        return "; every node needs Google Cloud credentials (GOOGLE_APPLICATION_CREDENTIALS)"
    return ""


def check_state_api(scheduler: str, trains_in_trial: bool) -> None:
    """ASHA stops a trial by ending its actor; the Ray Train run of a trial of several workers
    frees them through the State API (the dashboard's); without it stopped trials keep their
    CPUs forever: refuse. A one-worker trial trains in its own process and needs none."""
    import ray
    from ray.util.state import list_nodes

    if scheduler != "asha" or trains_in_trial:
        return
    node = ray.get_runtime_context().get_node_id()
    try:
        ours = any(n.node_id == node for n in list_nodes(limit=1000, timeout=10))
    except Exception:  # noqa: BLE001 - any State API failure means the same thing here
        ours = False
    if not ours:
        raise ClusterError(
            "this Ray cluster has no dashboard/State API, which Ray Train needs to free the"
            " workers of trials that ASHA stops; start Ray with its dashboard (ray start --head,"
            " or let `python -m pgray.sweep` start a local Ray) or set scheduler.type: none"
        )
