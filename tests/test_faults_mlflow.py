"""The MLflow server goes away: for the whole run (then ``podrun sync``), or killed mid-run and restarted.

This test starts its own ``mlflow server`` (the other tests' stores never see the fault).
Nothing is lost either way: every metric step reaches the run once, and records kept
during an outage are sent by the job itself once the server is back.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import read_run_info
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.faults import LOCAL_JOB, STEPS_PER_EPOCH, assert_same_result
from tests.fixtures import mlflow_server
from tests.fixtures.mlflow_server import MlflowServer
from tests.waiting import wait_for_text, wait_state, wait_until

pytestmark = pytest.mark.slow
LONG_JOB = [*LOCAL_JOB, "--set", "train.epochs=20", "--set", "eval.start_epoch=1000"]  # runs until cancelled


def loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return [metric.step for metric in client.get_metric_history(run_id, "train_loss")]


def last_logged_step(log: Path) -> int:
    """The global step of the last ``[train]`` line of a rank-0 log."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("[train] epoch ")]
    epoch, step = lines[-1].split()[2].split("/")[0], lines[-1].split()[4].split("/")[0]
    return (int(epoch) - 1) * STEPS_PER_EPOCH + int(step)


def test_mlflow_outages_lose_nothing(podrun_home, capsys, tmp_path, monkeypatch, reference, mlflow_host):
    monkeypatch.setattr(mlflow_server, "SERVER_START_TIMEOUT_S", 300)  # it starts twice, on a busy machine
    server = MlflowServer(tmp_path, mlflow_host)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("PODRUN_MLFLOW_RETRY_S", "2")
    try:
        # 1. Down for the whole run: the job trains as usual, keeps every record, says `podrun sync`.
        assert main(["launch", *LOCAL_JOB]) == exit_codes.NOT_REACHED
        offline = list_records(podrun_home)[0]
        assert f"podrun sync {offline.job_id}" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
        assert_same_result(offline.checkpoint_dir, reference)  # the outage changed nothing in training
        server.start()
        assert main(["sync", offline.job_id]) == 0
        assert "kept record(s)" in capsys.readouterr().out
        client = MlflowClient(server.uri)
        run_id = json.loads((Path(offline.job_dir) / "mlflow-spool" / "meta.json").read_text())["run_id"]
        assert loss_steps(client, run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
        assert "mlperf" in {artifact.path for artifact in client.list_artifacts(run_id)}
        assert main(["sync", offline.job_id]) == 0  # a second sync sends nothing twice
        assert "nothing kept" in capsys.readouterr().out

        # 2. Killed mid-run, restarted while the job runs: the job sends what it kept by itself.
        assert main(["launch", *LONG_JOB, "--detach"]) == 0
        record = list_records(podrun_home)[0]
        log = Path(record.job_dir) / "logs" / "rank0.log"
        wait_for_text(log, "[train] epoch 1/20 step 3/")
        run_id = wait_until(lambda: read_run_info(Path(record.checkpoint_dir)).get("mlflow_run_id"), "the run", 60)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        wait_for_text(log, "unavailable", timeout=120)  # the sender noticed, and keeps records
        server.start()
        back_at = last_logged_step(log)
        # Records from the outage reach the server while the job is still running, without `podrun sync`.
        wait_until(lambda: max(loss_steps(client, run_id), default=0) > back_at, "records after the restart", 120)
        capsys.readouterr()
        assert "RUNNING" in wait_state(record.job_id, capsys, {"RUNNING"}, timeout=5)
        assert main(["cancel", record.job_id]) == 0
        assert "CANCELLED" in wait_state(record.job_id, capsys, {"CANCELLED", "FAILED", "SUCCEEDED"}, timeout=300)
        final_step = last_logged_step(log)
        # the last records go once the ranks have exited, from rank 0's sender, which outlives them: no sync
        spool_meta = Path(record.job_dir) / "mlflow-spool" / "meta.json"
        wait_until(lambda: json.loads(spool_meta.read_text()).get("done"), "the sender to finish", 120)
        assert loss_steps(client, run_id) == list(range(1, final_step + 1))  # every step, each once
        assert client.get_run(run_id).info.status == "KILLED"  # stopped after a checkpoint
        assert "reachable again" in log.read_text()
    finally:
        server.stop()
