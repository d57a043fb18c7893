"""The GPU check against the lent machine's limits, without a GPU: stage budgets, at most 8
files returned, rows written as stages go, the device index NCCL needs, the wheelhouse's pins,
and the defaults that size loaders, epochs and GPU memory on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_method  # noqa: E402
import gpu_paths  # noqa: E402
import gpu_wheels  # noqa: E402

# -- stage budgets -----------------------------------------------------------------------------


def test_the_first_call_leaves_a_third_of_the_ten_minutes_and_runs_the_method_first():
    first = gpu_check.stages_of("1")
    assert gpu_check.STAGE_BUDGET_S == 400 and gpu_check.CALL_S == 600
    assert gpu_check.planned_seconds(first) <= gpu_check.STAGE_BUDGET_S
    assert [s.name for s in first[:2]] == ["attack_step", "method"]
    assert "paths" in {s.name for s in first}


def test_what_did_not_fit_has_a_second_call_that_fits_too():
    second = gpu_check.stages_of("2")
    assert [s.name for s in second] == ["precision"]
    assert gpu_check.planned_seconds(second) <= gpu_check.SECOND_CALL_S * 2 // 3
    every = {s.name for s in gpu_check.STAGES}
    assert {s.name for s in gpu_check.stages_of("all")} == every


def test_a_stage_that_would_pass_the_deadline_is_skipped_and_named(tmp_path):
    out = tmp_path / "out"
    rc = gpu_check.main([str(out), "--smoke", "--deadline-s", "1", "--work",
                         str(tmp_path / "work")])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stages"] == []
    assert [s.split(" ")[0] for s in results["skipped"]] == [s.name for s in gpu_check.STAGES]
    assert "## Not run in this call (for the second call)" in (out / "summary.md").read_text()


# -- what comes back ---------------------------------------------------------------------------


def test_seventeen_stage_files_and_an_mlflow_store_pack_into_at_most_eight_files(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "mlruns" / "0" / "run1" / "metrics").mkdir(parents=True)
    (work / "mlruns" / "0" / "run1" / "metrics" / "loss").write_text("1 0.5 0\n")
    (work / "mlruns" / "0" / "run1" / "artifacts").mkdir()
    (work / "mlruns" / "0" / "run1" / "artifacts" / "model.pt").write_bytes(b"\0" * (2 << 20))
    stages = []
    for name in ("attack_step", "train_step", "method", "gpu_utilisation", "paths",
                 "precision"):
        (work / f"{name}.txt").write_text(f"{name} output\n")
        (work / f"{name}.json").write_text(json.dumps({"rows": [{"stage": name}]}))
        stages.append({"name": name, "status": "ok", "limit_s": 10, "s": 1.0})
    (work / "paths.json").write_text(json.dumps({"paths": {"p": {"ok": True, "seen": "x",
                                                                 "s": 1.0}}}))
    for extra in ("method.md", "device.txt", "attack_summary.txt", "stages.txt", "x.md"):
        (work / extra).write_text("# t\n")
    assert sum(1 for p in work.rglob("*") if p.is_file()) >= 17
    record = {"call": "1", "smoke": False, "stages": stages, "skipped": [], "device": "GPU",
              "elapsed_s": 5.0}

    names = gpu_check.pack(work, out, record)

    assert len(names) <= gpu_check.MAX_FILES
    assert names == sorted(p.name for p in out.iterdir())  # nothing else, no folders
    for p in out.iterdir():
        assert p.is_file() and gpu_check.NAME_OK.match(p.name)
        assert p.stat().st_size <= gpu_check.MAX_FILE_BYTES
    results = json.loads((out / "results.json").read_text())
    assert results["rows"]["train_step"] == {"rows": [{"stage": "train_step"}]}
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"attack_step.txt", "method.md", "device.txt"} <= set(tar.getnames())
    with tarfile.open(out / "mlflow.tar.gz") as tar:  # the store, less its 2 MiB artifact
        assert tar.getnames() == ["mlruns/0/run1/metrics/loss"]
    assert "model.pt (2.0 MiB)" in (out / "summary.md").read_text()
    # packed again after a later stage: still the same files, rewritten in place
    assert gpu_check.pack(work, out, record) == names


@pytest.mark.parametrize("script,args,first_done,key", [
    ("attack_step.py", ["--models", "tiny", "vit_s14", "--batch-tiny", "2", "--batch-vits",
                        "1", "--steps", "1"], "# done: tiny fp32", "rows"),
    ("train_step.py", ["--skip", "rates"], "# done: step tiny fp32", "step"),
])
def test_a_stage_cut_after_its_first_case_keeps_that_case_rows(tmp_path, script, args,
                                                               first_done, key):
    """The stage is killed as soon as it reports its first case done: the rows of that case
    are on disk already (before, the JSON was written only at the end)."""
    rows = tmp_path / "rows.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(BENCH / script), "--device", "cpu", "--quick",
                             "--json", str(rows), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(first_done):
                break
    finally:
        proc.kill()
        proc.wait()
    assert seen and seen[-1].startswith(first_done), "".join(seen[-20:])
    written = json.loads(rows.read_text())[key]
    assert written and {r["model"] for r in written} == {"tiny"}


# -- the wheelhouse ----------------------------------------------------------------------------


def test_the_wheelhouse_pins_follow_the_project_pins():
    pins = dict(line.split("==") for line in gpu_wheels.pins())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[tune,train,default]=={pins["ray"]}"' in pyproject
    assert f'"mlflow=={pins["mlflow-skinny"]}"' in pyproject
    assert f"torchattacks=={pins['torchattacks']}" in (ROOT / "Makefile").read_text()
    lent = {line.strip() for line in (BENCH / "gpu" / "lent_packages.txt").read_text()
            .splitlines() if line and not line.startswith("#")}
    assert not set(pins) & lent  # nothing the machine holds travels again


def test_slimming_a_wheel_drops_the_members_and_their_record_lines(tmp_path):
    import zipfile

    wheel = tmp_path / "ray-9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ray/__init__.py", "x = 1\n")
        z.writestr("ray/jars/ray_dist.jar", b"\0" * 4096)
        z.writestr("ray/dashboard/client/build/static/js/main.js.map", "{}")
        z.writestr("ray-9.9.dist-info/RECORD", "ray/__init__.py,sha256=a,6\n"
                   "ray/jars/ray_dist.jar,sha256=b,4096\n"
                   "ray/dashboard/client/build/static/js/main.js.map,sha256=c,2\n"
                   "ray-9.9.dist-info/RECORD,,\n")
    gpu_wheels.slim_wheel(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert z.namelist() == ["ray/__init__.py", "ray-9.9.dist-info/RECORD"]
        assert z.read("ray-9.9.dist-info/RECORD").decode().splitlines() == [
            "ray/__init__.py,sha256=a,6", "ray-9.9.dist-info/RECORD,,"]


def test_the_lent_command_line_installs_into_a_target_and_never_installs_pgray():
    line = gpu_check.LENT_COMMAND.read_text().strip()
    assert "\n" not in line and len(line) <= 2000  # the device tool's limit on a command
    assert "--no-index --no-deps" in line and "--target" in line and ".whl/*.whl" in line
    assert "pip install -e" not in line and "PYTHONPATH=" in line
    assert line.endswith('bash benchmarks/gpu_check.sh "$OUT/"')
    assert line in (BENCH / "README.md").read_text()
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--print-command"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == line


# -- the GPU defaults (item 2 and 5 of issue 32) -----------------------------------------------


def test_nccl_gets_a_device_id_with_an_index(tmp_path):
    """init_process_group(device_id=torch.device('cuda')) raises on a GPU ('Please use a
    device_id with index'); the options carry cuda:0 instead. No GPU needed to build them."""
    options = gpu_paths.process_group_options(tmp_path, torch.device("cuda"))
    assert options["backend"] == "nccl"
    assert options["device_id"] == torch.device("cuda", 0)
    assert options["device_id"].index == 0
    assert gpu_paths.process_group_device(torch.device("cuda", 3)).index == 3
    cpu = gpu_paths.process_group_options(tmp_path, torch.device("cpu"))
    assert cpu["backend"] == "gloo" and "device_id" not in cpu


def test_epochs_are_sized_from_a_warm_epoch_not_the_cold_first_one():
    # a 20 s first epoch (CUDA start, loader fork, first proxy) and 5 s warm ones: 90 s hold
    # the 15 s start once and 15 warm epochs (a cold-epoch estimate said 4)
    assert gpu_method.epochs_for(90, first_epoch_s=20, warm_epoch_s=5) == 15
    assert gpu_method.epochs_for(10, first_epoch_s=20, warm_epoch_s=5) == 2  # at least two


def test_loader_workers_follow_the_cpus_ray_reserved():
    from pgray.config import ExperimentConfig
    from pgray.core.device import loader_workers
    from pgray.core.training_data import make_loader

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loader_workers(cpu, reserved_cpus=8) == 0
    assert loader_workers(cuda, reserved_cpus=4) == 3  # one CPU drives the GPU
    assert loader_workers(cuda, reserved_cpus=1) == 0
    assert loader_workers(cuda) == min(4, os.cpu_count() or 1)
    cfg = ExperimentConfig.from_dict({"data": {"dataset": "synthetic", "root": "x"}})
    loader = make_loader(list(range(8)), 2, shuffle=False, cfg=cfg, rank=0, world_size=1,
                         device=cuda, reserved_cpus=3)
    assert loader.num_workers == 2 and loader.pin_memory


def test_evaluation_loads_with_workers_into_pinned_memory_on_cuda_only():
    from pgray.core.scoring import test_loader

    on_gpu = test_loader(list(range(4)), 2, torch.device("cuda"))
    assert on_gpu.num_workers == min(2, os.cpu_count() or 1) and on_gpu.pin_memory
    on_cpu = test_loader(list(range(4)), 2, torch.device("cpu"))
    assert on_cpu.num_workers == 0 and not on_cpu.pin_memory


def test_a_fractional_gpu_actor_is_capped_at_its_share_of_the_memory():
    from pgray.core.device import gpu_memory_fraction

    assert gpu_memory_fraction(0.5) == 0.5
    assert gpu_memory_fraction(0.25) == 0.25
    assert gpu_memory_fraction(1.0) is None and gpu_memory_fraction(0.0) is None
    assert gpu_memory_fraction(2.0) is None
