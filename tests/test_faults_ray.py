"""A Ray Train worker SIGKILLed mid-epoch: Ray restarts the group within its failure budget,
the new group resumes from the last complete checkpoint, and the run ends with the weights
and evaluations of an uninterrupted one (docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.cli import main
from orchestrator.jobstore import list_records
from tests.faults import SETTINGS, assert_same_result
from tests.test_ray_backend import ray_logs, ray_profile, wait_for_log  # noqa: F401 - ray_profile is a fixture
from tests.waiting import wait_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_profile")]
RAY_JOB = ["resnet50:tiny", "--set", "cluster=test", "--set", "nodes=2", "--set", "tasks_per_node=1",
           "--backend", "ray", *SETTINGS]


def test_killed_ray_worker_restarts_and_ends_like_an_uninterrupted_run(local_env, capsys, reference):
    assert main(["launch", *RAY_JOB, "--detach"]) == 0
    record = list_records(local_env)[0]
    capsys.readouterr()
    wait_for_log(record, r"\[checkpoint\] .*ckpt-0+8\.pt")
    wait_for_log(record, r"\[train\] epoch 2/2 step 3/8")
    os.kill(int(wait_for_log(record, r"\[rank 1/2\] pid (\d+)").group(1)), signal.SIGKILL)
    line = wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    logs = ray_logs(record)
    assert "finished without reaching target" in line, logs[-3000:]  # the run's own end, not the kill
    assert "[resume] ckpt-000000008.pt: epoch 2, step 0" in logs, logs[-3000:]
    assert_same_result(record.checkpoint_dir, reference)
