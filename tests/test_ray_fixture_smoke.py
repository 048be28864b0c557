"""The Ray fixture works: two alive nodes, a job runs a 2-worker TorchTrainer, and auth is enforced."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.fixtures.ray_cluster import AUTH_VARS, RayCluster

# Runs inside the job: two Train workers on different nodes (STRICT_SPREAD) allreduce their rank + 1.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import tempfile

    import ray
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer


    def train_loop(config):
        total = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(total)
        nodes = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
        metrics = {"sum": total.item(), "world_size": dist.get_world_size(), "nodes": len(set(nodes))}
        # Result.metrics comes from the last checkpointed report (Train V2), and the checkpoint
        # also proves that storage_path works.
        with tempfile.TemporaryDirectory() as ckpt:
            torch.save(total, os.path.join(ckpt, "total.pt"))
            checkpoint = Checkpoint.from_directory(ckpt) if dist.get_rank() == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)


    ray.init()  # the job's cluster; passing resources here would raise
    scaling = ScalingConfig(
        num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}, placement_strategy="STRICT_SPREAD"
    )
    result = TorchTrainer(
        train_loop, scaling_config=scaling, run_config=RunConfig(name="smoke", storage_path=sys.argv[1])
    ).fit()
    print("SMOKE_RESULT", result.metrics["sum"], result.metrics["world_size"], result.metrics["nodes"])
    assert os.path.isfile(os.path.join(result.checkpoint.path, "total.pt"))
    assert (result.metrics["sum"], result.metrics["world_size"], result.metrics["nodes"]) == (3.0, 2, 2)
    """
)


def no_token_env(home: Path) -> dict[str, str]:
    """An environment with no Ray token anywhere: no auth variables, and a HOME without ``.ray/``."""
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARS}
    return {**env, "HOME": str(home)}


def http_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of a GET (errors included)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_nodes_are_alive(ray_cluster: RayCluster) -> None:
    nodes = ray_cluster.alive_nodes()
    assert len(nodes) == 2
    assert sorted(node["resources_total"]["CPU"] for node in nodes) == [1.0, 2.0]
    status = ray_cluster.ray("status", f"--address={ray_cluster.address}").stdout
    assert status.count(" node_") == 2, status


@pytest.mark.slow
def test_job_runs_a_two_worker_torch_trainer(ray_cluster: RayCluster, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "train_smoke.py").write_text(TRAIN_SCRIPT)
    storage = tmp_path / "ray_results"
    submission_id = f"podrun-smoke-{uuid.uuid4().hex[:8]}"

    proc = ray_cluster.ray(
        "job", "submit", f"--address={ray_cluster.dashboard_url}", f"--submission-id={submission_id}",
        f"--working-dir={workdir}", "--", "python", "train_smoke.py", str(storage),
        check=False, timeout=300,
    )  # fmt: skip

    client = JobSubmissionClient(ray_cluster.dashboard_url, headers=ray_cluster.auth_headers)
    logs = client.get_job_logs(submission_id)
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED, logs[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SMOKE_RESULT 3.0 2 2" in logs
    assert list(storage.glob("smoke/checkpoint_*/total.pt")), "no checkpoint under the storage_path"


def test_requests_without_the_token_are_refused(ray_cluster: RayCluster, tmp_path: Path) -> None:
    version_url = f"{ray_cluster.dashboard_url}/api/version"
    assert http_status(version_url, {}) == 401
    assert http_status(version_url, {"Authorization": "Bearer " + "0" * 64}) == 403
    with_token = http_status(version_url, ray_cluster.auth_headers)  # not inside assert: pytest would print it
    assert with_token == 200

    # A real client in a clean process (the auth mode is read once per process).
    probe = (
        "from ray.exceptions import AuthenticationError\n"
        "from ray.job_submission import JobSubmissionClient\n"
        "try:\n"
        f"    JobSubmissionClient({ray_cluster.dashboard_url!r}).list_jobs()\n"
        "except AuthenticationError:\n"
        "    print('REFUSED')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=no_token_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "REFUSED", proc.stderr[-2000:]
