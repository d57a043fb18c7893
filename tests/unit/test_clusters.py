"""Offline checks of the cluster configs in clusters/.

The two `ray up` files are validated with Ray's own cluster-config machinery:
`prepare_config` merges a config over the provider's defaults.yaml shipped inside the ray
package and fills in per-node-type worker bounds; it makes no cloud API call (that happens
later, in `ray up`'s provider bootstrap). `validate_config` then checks the *prepared* config
against ray/autoscaler/ray-schema.json plus Ray's extra rules; it needs the merged fields
(for example `cluster_synced_files`), so the raw file is never validated on its own.

The Kubernetes manifests have no schema here (no API server, no CRDs), so their required
fields are checked directly, together with the security rules of clusters/README.md.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
RAY_UP = {"aws-gpu.yaml": "aws", "gcp-gpu.yaml": "gcp"}
STORAGE_SCHEME = {"aws": "s3://", "gcp": "gs://"}
KUBE = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
DOCKERFILE = CLUSTERS / "pgray.Dockerfile"

# GPUs per node of the instance / machine types these configs may use.
AWS_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "g6.xlarge": 1,
            "p4d.24xlarge": 8, "p5.48xlarge": 8}
GCP_ATTACHED_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1,
                     "g2-standard-16": 1, "a2-highgpu-1g": 1, "a2-highgpu-2g": 2}
# Fake values that must be replaced; a line holding one must say EDIT (README: grep -n EDIT).
PLACEHOLDERS = ("your-bucket", "your-gcp-project-id", "123456789012",
                "ami-0123456789abcdef0", "example.com")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def prepare(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(config)


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(config)


def installed_ray_version() -> str:
    import ray

    return ray.__version__


def strings(node):
    """Every string value (not key) in a parsed YAML document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def flag_value(command: str, flag: str) -> str | None:
    """Value of `--flag=X` or `--flag X` in a shell command line, None when absent."""
    tokens = shlex.split(command.replace(";", " ; "))
    for i, tok in enumerate(tokens):
        if tok == flag and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


def dashboard_exposure(prepared: dict) -> list[str]:
    """Problems with how a prepared `ray up` config starts the head's dashboard."""
    problems = []
    heads = [c for c in prepared["head_start_ray_commands"] if "--head" in c]
    if len(heads) != 1:
        return [f"expected one `ray start --head` command, got {len(heads)}"]
    host = flag_value(heads[0], "--dashboard-host")
    if host not in (None, "127.0.0.1", "localhost"):
        problems.append(f"dashboard bound to {host}")
    return problems


def docker_env(prepared: dict) -> dict[str, str]:
    env = {}
    for opt in prepared["docker"].get("run_options", []):
        parts = opt.split(None, 1)
        if parts[0] in ("--env", "-e") and len(parts) == 2 and "=" in parts[1]:
            key, value = parts[1].split("=", 1)
            env[key] = value
    return env


# --------------------------------------------------------------------------- ray up files


@pytest.fixture(scope="module", params=sorted(RAY_UP))
def ray_up(request):
    name = request.param
    raw = load(name)
    return name, RAY_UP[name], raw, prepare(raw)


def test_ray_up_config_passes_ray_schema(ray_up):
    _, provider, raw, prepared = ray_up
    validate(prepared)
    assert prepared["provider"]["type"] == provider
    assert raw["head_node_type"] in raw["available_node_types"]


def test_schema_validation_rejects_a_misspelt_field(ray_up):
    import jsonschema

    _, _, raw, _ = ray_up
    broken = yaml.safe_load(yaml.safe_dump(raw))
    worker = next(k for k in broken["available_node_types"] if k != broken["head_node_type"])
    broken["available_node_types"][worker]["min_worker"] = 1  # not `min_workers`
    with pytest.raises(jsonschema.ValidationError):
        validate(prepare(broken))


def gpu_count(provider: str, node_type: dict) -> int:
    cfg = node_type["node_config"]
    declared = node_type.get("resources", {}).get("GPU")
    if provider == "aws":
        hardware = AWS_GPUS.get(cfg["InstanceType"], 0)
    else:
        hardware = GCP_ATTACHED_GPUS.get(cfg["machineType"], 0) + sum(
            a["acceleratorCount"] for a in cfg.get("guestAccelerators", []))
    if declared is not None:
        assert declared == hardware, f"resources say {declared} GPU, hardware has {hardware}"
    return hardware


def test_cpu_head_and_autoscaled_gpu_workers(ray_up):
    _, provider, _, prepared = ray_up
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert gpu_count(provider, types[head]) == 0, "the head should be a CPU node"
    assert types[head]["max_workers"] == 0
    gpu_types = {k: v for k, v in types.items() if k != head and gpu_count(provider, v) > 0}
    assert gpu_types, "no GPU worker type"
    assert all(v["min_workers"] == 0 for v in gpu_types.values()), "idle GPUs should scale to 0"
    assert any(v["max_workers"] >= 1 for v in gpu_types.values()), "no GPU type can start"
    assert prepared["max_workers"] >= max(v["max_workers"] for v in gpu_types.values())
    assert prepared["idle_timeout_minutes"] <= 30


def test_gcp_gpu_nodes_terminate_on_maintenance():
    prepared = prepare(load("gcp-gpu.yaml"))
    for name, node_type in prepared["available_node_types"].items():
        if gpu_count("gcp", node_type) == 0:
            continue
        scheduling = node_type["node_config"]["scheduling"]
        # The Compute API wants an object here; a list of one-key dicts is a known trap.
        assert isinstance(scheduling, dict), name
        assert scheduling["onHostMaintenance"] == "TERMINATE", name
        assert node_type["node_config"]["serviceAccounts"], f"{name} cannot reach the bucket"


def test_aws_gpu_workers_get_an_instance_profile():
    prepared = prepare(load("aws-gpu.yaml"))
    for name, node_type in prepared["available_node_types"].items():
        if gpu_count("aws", node_type) > 0:
            assert node_type["node_config"]["IamInstanceProfile"]["Arn"], name


def test_image_matches_the_local_ray_and_installs_pgray(ray_up):
    _, _, _, prepared = ray_up
    image = prepared["docker"]["image"]
    version = re.escape(installed_ray_version())
    assert re.fullmatch(rf"rayproject/ray:{version}-py311-gpu", image), image
    assert prepared["file_mounts"]["/home/ray/pgray"] == "."
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any(re.search(r"pip install .*-e /home/ray/pgray\b", c) for c in commands)
        assert any("--no-deps torchattacks==3.5.1" in c for c in commands)
    every = prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    for command in every:
        if "torchattacks" in command and not command.lstrip().startswith("#"):
            assert "--no-deps" in command, command


def test_ray_up_dashboard_stays_on_localhost(ray_up):
    _, _, _, prepared = ray_up
    assert dashboard_exposure(prepared) == []
    assert not any("0.0.0.0" in s for s in strings(prepared))


def test_dashboard_check_catches_ray_default_head_command(ray_up):
    """Dropping head_start_ray_commands silently brings back Ray's 0.0.0.0 default."""
    _, _, raw, _ = ray_up
    stripped = {k: v for k, v in raw.items() if k != "head_start_ray_commands"}
    problems = dashboard_exposure(prepare(stripped))
    assert problems == ["dashboard bound to 0.0.0.0"]


def test_ray_up_token_auth_and_tracking_env(ray_up):
    _, provider, _, prepared = ray_up
    env = docker_env(prepared)
    assert env["RAY_AUTH_MODE"] == "token"
    token_path = env["RAY_AUTH_TOKEN_PATH"]
    assert any(token_path.startswith(remote.rstrip("/") + "/")
               for remote in prepared["file_mounts"]), "token file is not synced to the nodes"
    assert env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert env["PGRAY_STORAGE"].startswith(STORAGE_SCHEME[provider])
    assert not any("RAY_AUTH_MODE=disabled" in s for s in strings(prepared))


# --------------------------------------------------------------------------- KubeRay files


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_specs(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


@pytest.fixture(scope="module", params=KUBE)
def kube(request):
    return request.param, load(request.param)


def test_manifest_identity(kube):
    name, doc = kube
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == ("RayJob" if "rayjob" in name else "RayCluster")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_manifest_head_and_gpu_workers(kube):
    _, doc = kube
    spec = cluster_spec(doc)
    head = spec["headGroupSpec"]
    # Kubernetes stores rayStartParams as map[string]string: numbers or booleans are rejected.
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    for _, pod in pod_specs(spec):
        assert pod["containers"], "pod template without containers"
        for container in pod["containers"]:
            assert container["name"] and container["image"]
    head_limits = head["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    assert "nvidia.com/gpu" not in head_limits, "the head should not hold a GPU"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        lo, n, hi = group["minReplicas"], group["replicas"], group["maxReplicas"]
        assert all(isinstance(v, int) for v in (lo, n, hi))
        assert 0 <= lo <= n <= hi and hi >= 1
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        # Extended resources: a request, when given, must equal the limit.
        if "nvidia.com/gpu" in resources.get("requests", {}):
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


def test_manifest_keeps_token_auth_and_a_private_dashboard(kube):
    _, doc = kube
    spec = cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == installed_ray_version()
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress") is not True
    assert head["rayStartParams"].get("dashboard-host", "pod default") != "0.0.0.0"
    for group, pod in pod_specs(spec):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") != "disabled", group
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith(("http://", "https://"))
    assert not any("0.0.0.0" in s for s in strings(doc))


def test_rayjob_runs_the_sweep_and_cleans_up():
    from ray.runtime_env import RuntimeEnv

    job = load("kuberay-rayjob.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "-m", "pgray.sweep"]
    config = argv[argv.index("--config") + 1]
    assert config.startswith("search_spaces/") and config.endswith(".yaml")
    assert argv[argv.index("--storage") + 1].startswith(("s3://", "gs://"))
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] > 0
    assert isinstance(job.get("activeDeadlineSeconds", 1), int)

    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    working_dir = runtime_env["working_dir"]
    # A local working_dir is uploaded by the `ray job submit` of the submitter pod, which runs
    # the head image: it must be where the Dockerfile puts the checkout, and only K8sJobMode
    # runs that CLI.
    assert working_dir == dockerfile_workdir()
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    # The path exists only in the image: validate the rest with a directory that exists here.
    RuntimeEnv(**{**runtime_env, "working_dir": str(ROOT)})


def test_rayjob_cluster_is_the_raycluster():
    assert load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"] == load(
        "kuberay-raycluster.yaml")["spec"], "edit both files together"


# --------------------------------------------------------------------------- image, text


def dockerfile_workdir() -> str:
    found = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert len(found) == 1
    return found[0]


def test_dockerfile_builds_on_the_cluster_image():
    text = DOCKERFILE.read_text()
    base = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == [load("aws-gpu.yaml")["docker"]["image"]]
    assert "--no-deps torchattacks==3.5.1" in text
    assert re.search(r"pip install\b.*-e \.", text)
    ignore = (CLUSTERS / "pgray.Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


@pytest.mark.parametrize("name", sorted(RAY_UP) + KUBE)
def test_placeholders_are_marked_edit(name):
    for number, line in enumerate((CLUSTERS / name).read_text().splitlines(), 1):
        code = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
        if any(p in code for p in PLACEHOLDERS):
            assert "EDIT" in line, f"{name}:{number} has a placeholder without EDIT: {line}"


def readme_commands() -> list[tuple[str, str]]:
    """(section title, command) for each shell command in the README's code blocks."""
    out, section, in_block, pending = [], "", False, ""
    for line in (CLUSTERS / "README.md").read_text().splitlines():
        stripped = line.strip()
        if not in_block and line.startswith("## "):
            section = line[3:]
        if stripped.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            pending += " " + stripped.rstrip("\\")
            if not stripped.endswith("\\"):
                out.append((section, pending.strip()))
                pending = ""
    return out


def test_readme_commands_bind_to_localhost():
    commands = readme_commands()
    mlflow = [c for _, c in commands if "mlflow server" in c]
    heads = [c for _, c in commands if "ray start --head" in c]
    assert mlflow
    for command in mlflow:
        assert flag_value(command.split("#")[0], "--host") == "127.0.0.1", command
    for command in heads:
        assert flag_value(command, "--dashboard-host") == "127.0.0.1", command
    assert not any("0.0.0.0" in c for _, c in commands)
    for section, command in commands:
        if "RAY_AUTH_MODE=disabled" in command:
            assert section.startswith("Local"), f"auth disabled outside Local: {command}"


def test_the_local_cluster_listens_on_loopback_only():
    """clusters/local starts every service on 127.0.0.1 and the worker nodes on 127.0.0.x;
    the Ray head keeps its dashboard on loopback and its token authentication on."""
    source = "\n".join(p.read_text() for p in sorted((ROOT / "clusters" / "local").glob("*.py")))
    for needle in ('"--dashboard-host=127.0.0.1"', '"-ip.bind=127.0.0.1"',
                   '"--host", "127.0.0.1"', '"-h", "127.0.0.1"', '"RAY_AUTH_MODE": "token"',
                   'f"127.0.0.{i}"'):
        assert needle in source, needle
    assert "0.0.0.0" not in source and "RAY_AUTH_MODE=disabled" not in source
