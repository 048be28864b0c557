"""The Ray backend against a real two-node Ray cluster (token auth on, as Ray 2.60 defaults)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import read_run_info
from orchestrator.backends.ray_backend import RayBackend
from orchestrator.cli import main
from orchestrator.spec.jobstore import JobRecord, list_records
from orchestrator.studies.run_phases import record_phases
from tests.waiting import status_logs_then_cancel, wait_state, wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_profile(local_env, ray_cluster, tmp_path, digits_root, monkeypatch) -> Path:
    """A cluster file whose ``test`` profile is the fixture's Ray cluster (2 workers of 1 CPU)."""
    profile = {
        "scheduler": "ray", "nodes": 2, "gpus_per_node": 0,
        "data_root": str(digits_root), "checkpoint_root": str(tmp_path / "checkpoints"),
        "state_dir": str(tmp_path / "state"),
        "preflight": {"enabled": False},  # the preflight tests pay for it (tests/test_preflight_ray.py)
        "ray": {"address": ray_cluster.dashboard_url, "token_file": str(ray_cluster.token_path),
                "python": sys.executable, "max_failures": 2},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"test": profile}}))
    monkeypatch.setenv("PODRUN_CLUSTER_FILE", str(path))
    return path


JOB = ["resnet50:tiny", "--set", "cluster=test", "--set", "nodes=2", "--set", "tasks_per_node=1"]


def ray_logs(record) -> str:
    return RayBackend()._client(record.extra["ray"]).get_job_logs(record.native_id)


def wait_for_log(record, pattern: str, timeout: float = 300) -> re.Match:
    return wait_until(lambda: re.search(pattern, ray_logs(record)), f"{pattern!r} in the Ray job's logs", timeout, 2)


def readme_ray_line(auth: bool) -> str:
    """The README's ``ray job submit`` command for a cluster with (or without) token auth, as one line."""
    text = (REPO / "README.md").read_text()
    first = "RAY_AUTH_MODE=token ray job submit" if auth else "\nray job submit"
    start = text.index(first) + (0 if auth else 1)
    lines = []
    for line in text[start:].splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            return " ".join(lines)
    raise AssertionError("unterminated command in README.md")


@pytest.mark.registry
def test_readme_ray_job_submit_line_records_the_run_where_the_launcher_says(ray_cluster, digits_root, tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "digits").symlink_to(digits_root / "digits")
    command = readme_ray_line(auth=True).replace("HEAD:8265", ray_cluster.dashboard_url.split("//")[1])
    command = command.replace("/shared/podrun", str(shared))
    command += " --set nodes=2 --set tasks_per_node=1 --set system_metrics_interval_s=2"
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith(("PODRUN_", "MLFLOW_"))}
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:] + ray_cluster.logs()
    assert "[ray] finished: reached target" in out and "[done] reached target" in out
    assert ray_cluster.token not in out
    printed = re.search(r"\[ray\] MLflow: (\S+) \(experiment resnet50\)", out).group(1)
    assert printed == f"sqlite:///{shared / 'mlflow.db'}"  # on the shared storage, not in Ray's temporary copy
    assert f"[mlflow] the run goes to {printed}" in out  # rank 0 says the same
    (run_info,) = (shared / "checkpoints" / "resnet50-tiny").glob("*/run.json")
    client = MlflowClient(printed)
    run = client.get_run(json.loads(run_info.read_text())["mlflow_run_id"])
    assert run.data.metrics["time_to_train_s"] > 0 and run.data.params["backend"] == "ray"
    assert run.data.params["world_size"] == "2" and run.data.metrics["world_size"] == 2
    # node 0's system metrics (this fixture's two nodes share one IP, so Ray gives both workers the same node
    # and only node 0 has a monitor; tests/test_slurm_backend.py checks node_1 on two Slurm nodes)
    assert "system/node_0/cpu_utilization_percentage" in run.data.metrics
    assert run.data.tags["mlflow.note.content"].startswith("**reached top-1 ")
    assert "--set cluster=ray --set nodes=2" in run.data.tags["mlflow.note.content"]
    assert client.get_model_version("resnet50", "1").run_id == run.info.run_id  # by the driver, workers gone
    assert 0 <= run.data.metrics["device_release_s"] < 60  # run_stop to the end of the worker group:
    assert re.search(r"\[ray\] the last worker exited [\d.]+ s before fit\(\) returned", out)  # from Ray's state API
    assert not any(ray_cluster.token in value for value in {**run.data.params, **run.data.tags}.values())


def test_readme_has_a_ray_line_for_either_kind_of_cluster():
    open_line, token_line = readme_ray_line(auth=False), readme_ray_line(auth=True)
    assert open_line.startswith("ray job submit --address http://HEAD:8265")
    assert token_line == "RAY_AUTH_MODE=token " + open_line


def test_killed_worker_restarts_and_resumes_from_its_checkpoint(ray_profile, local_env, capsys):
    assert main(["launch", *JOB, "--backend", "ray", "--detach"]) == 0
    record = list_records(local_env)[0]
    capsys.readouterr()
    wait_for_log(record, r"\[checkpoint\] .*ckpt-0+22\.pt")  # the end of epoch 1
    worker = int(wait_for_log(record, r"\[rank 1/2\] pid (\d+)").group(1))
    os.kill(worker, signal.SIGKILL)
    line = wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    logs = ray_logs(record)
    assert "SUCCEEDED" in line, logs[-3000:]
    resumed_epochs = [int(e) for e in re.findall(r"\[resume\] ckpt-\d+\.pt: epoch (\d+)", logs)]
    assert resumed_epochs and min(resumed_epochs) >= 2, logs[-3000:]  # not from epoch 1, not from scratch
    info = read_run_info(Path(record.checkpoint_dir))
    assert len(info["attempts"]) == 2  # two starts of the worker group, one MLflow run
    run = MlflowClient(record.tracking_uri).get_run(info["mlflow_run_id"])
    assert run.data.metrics["reached_target"] == 1.0 and run.data.tags["attempts"] == "2"
    breakdown = record_phases(JobRecord.load(record.path))  # Ray: queued ends when the workers are up
    assert breakdown.phases["lost"] > 0 and abs(breakdown.total_s - breakdown.wall_s) <= 0.02 * breakdown.wall_s
    assert breakdown.phases["other"] < 0.10 * breakdown.wall_s, breakdown.phases  # measured, not left over


def test_status_logs_and_cancel_on_a_real_ray_job(ray_profile, local_env, capsys):
    assert main(["launch", *JOB, "--backend", "ray", "--detach", "--set", "train.epochs=50",
                 "--set", "eval.target=1.0"]) == 0
    record = list_records(local_env)[0]
    capsys.readouterr()
    wait_for_log(record, r"\[train\] epoch 1/50")
    status_logs_then_cancel(record.job_id, capsys)


@pytest.mark.parametrize("recipe,extra,unit", [
    ("transformer:tiny", [], "tok"),
    ("resnet50:tiny", ["--set", "comm=horovod"], "img"),  # Horovod's RayExecutor
])
def test_recipe_and_comm_variants_reach_their_target_through_ray(ray_profile, local_env, capsys, recipe, extra,
                                                                 unit, translation_root, ray_cluster):
    if recipe.startswith("transformer"):
        extra = [*extra, "--set", f"profile.data_root={translation_root}"]
    args = [recipe, *JOB[1:], "--backend", "ray", *extra]
    assert main(["launch", *args]) == exit_codes.SUCCESS, capsys.readouterr().out[-3000:]
    record = list_records(local_env)[0]
    run = MlflowClient(record.tracking_uri).get_run(read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"])
    assert run.data.metrics["time_to_train_s"] > 0 and f"mean_throughput_{unit}_per_s" in run.data.metrics
    # one rank on each host, each with its own address
    assert sorted(run.data.tags["hosts"].split(",")) == sorted(ray_cluster.hosts.nodes)
