"""An elastic Ray run loses a host and goes on with the worker left, keeping the global batch.

A Ray cluster of this module's own (two hosts of 1 CPU each, tests/fixtures/hosts.py), the
fault job of tests/faults.py on 2 workers with ``ray.min_workers: 1``; after the first
checkpoint every process of the second host is SIGKILLed (a host crash). Ray Train V2 starts
the group again with the one worker that fits, which resumes from the checkpoint with twice the
gradient accumulation: the run ends having trained on the same samples in the same optimizer
steps as the uninterrupted job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jobs.rank.checkpoint import latest_checkpoint, load_checkpoint
from orchestrator.spec.jobstore import list_records
from tests.faults import SETTINGS, STEPS_PER_EPOCH, podrun
from tests.fixtures.ray_cluster import RayCluster
from tests.test_ray_backend import ray_logs, wait_for_log
from tests.waiting import wait_state, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-elastic")]


@pytest.fixture(scope="module")
def small_ray() -> Iterator[RayCluster]:
    cluster = RayCluster("r4", 2, head_cpus=1)  # no host can take both workers
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_lost_host_leaves_one_worker_that_finishes_with_the_same_global_batch(
        small_ray, podrun_home, tmp_path, capsys):
    profile = {"scheduler": "ray", "nodes": 2, "gpus_per_node": 0, "data_root": str(tmp_path),
               "checkpoint_root": str(tmp_path / "checkpoints"), "state_dir": str(tmp_path / "state"),
               "preflight": {"enabled": False},
               "ray": {"address": small_ray.dashboard_url, "token_file": str(small_ray.token_path),
                       "python": sys.executable, "max_failures": 2, "min_workers": 1}}
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump({"profiles": {"test": profile}}))
    podrun("launch", "resnet50:tiny", "--cluster-file", str(cluster_file), "--set", "cluster=test",
           "--set", "nodes=2", "--set", "tasks_per_node=1", "--backend", "ray", *SETTINGS, "--detach",
           env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(120)
    record = wait_until(lambda: next((r for r in list_records(podrun_home) if r.native_id), None), "the job", 120)
    wait_for_log(record, r"\[checkpoint\] .*ckpt-0+8\.pt")
    lost = small_ray.hosts.nodes[1]
    assert small_ray.hosts.crash(lost), f"nothing ran on {lost}"
    line = wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=600)
    logs = ray_logs(record)
    # it ends at the last epoch (one worker sees only its own synthetic batch, learnable to top-1 1.0)
    assert "SUCCEEDED" in line or "finished without reaching target" in line, logs[-3000:]
    assert "[resume] ckpt-000000008.pt" in logs and "[rank 0/1]" in logs, logs[-3000:]
    final = load_checkpoint(latest_checkpoint(Path(record.checkpoint_dir)))["progress"]
    # the same optimizer steps, and the same samples, as the job on 2 ranks: 2 epochs of 512
    assert final["global_step"] == 2 * STEPS_PER_EPOCH and final["items"] == 2 * 512, final
