"""A Ray Train worker SIGKILLed mid-epoch: Ray restarts the group within its failure budget,
the new group resumes from the last complete checkpoint, and the run ends with the weights
and evaluations of an uninterrupted one; the launcher SIGKILLed before that changes nothing
(docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import subprocess

import pytest

from orchestrator.spec.jobstore import list_records
from tests.faults import SETTINGS, assert_same_result, kill, podrun
from tests.test_ray_backend import ray_logs, ray_profile, wait_for_log  # noqa: F401 - ray_profile is a fixture
from tests.waiting import wait_state, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_profile")]
RAY_JOB = ["resnet50:tiny", "--set", "cluster=test", "--set", "nodes=2", "--set", "tasks_per_node=1",
           "--backend", "ray", *SETTINGS]


def test_killed_ray_worker_restarts_and_ends_like_an_uninterrupted_run(local_env, capsys, reference):
    cli = podrun("launch", *RAY_JOB, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = wait_until(lambda: next((r for r in list_records(local_env) if r.native_id), None), "the job", 120)
    wait_for_log(record, r"\[train\] epoch 1/2 step 1/8")
    kill(cli.pid)  # the attached launcher dies: nothing changes for a Ray job
    cli.wait()
    wait_for_log(record, r"\[checkpoint\] .*ckpt-0+8\.pt")
    wait_for_log(record, r"\[train\] epoch 2/2 step 3/8")
    kill(int(wait_for_log(record, r"\[rank 1/2\] pid (\d+)").group(1)))
    line = wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    logs = ray_logs(record)
    assert "finished without reaching target" in line, logs[-3000:]  # the run's own end, not the kill
    assert "[resume] ckpt-000000008.pt: epoch 2, step 0" in logs, logs[-3000:]
    assert_same_result(record.checkpoint_dir, reference)
