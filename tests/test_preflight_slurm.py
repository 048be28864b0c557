"""Preflight on the real two-host Slurm cluster: a healthy job passes and trains; a real fault on node2
(its checkpoint root on a full 1 MiB tmpfs) is named, and a 1-node job placed there is requeued
without it and trains on node1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import read_run_info
from orchestrator.cli import main
from tests.test_slurm_backend import job_args, make_profile, newest_record, slurm_log
from tests.waiting import wait_for_text, wait_state, wait_until

pytestmark = pytest.mark.slow
CHECKS = {"min_busbw_gbps": 0.001, "min_free_gb": 0.05}  # this box's loopback gloo and /tmp pass; a full tmpfs not


def mlflow_run(record, checkpoint_dir: str | None = None):
    client = MlflowClient(record.tracking_uri)
    run_id = read_run_info(Path(checkpoint_dir or record.checkpoint_dir))["mlflow_run_id"]
    return client, client.get_run(run_id)


def test_healthy_job_passes_preflight_and_reaches_its_target(local_env, slurm_cluster, monkeypatch, tmp_path,
                                                             digits_root, capsys):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf_path))
    cluster = make_profile(tmp_path, digits_root, preflight=CHECKS)
    args = job_args(cluster, "--set", "train.epochs=1", "--set", "eval.target=0.01")
    assert main(["launch", *args]) == exit_codes.SUCCESS, capsys.readouterr().out[-3000:]
    record = newest_record(local_env)
    log = slurm_log(record).read_text()
    assert "[preflight] preflight all nodes passed" in log and "[done] reached target" in log
    assert log.index("preflight all nodes passed") < log.index("[rank 0/2]")  # checked before training
    client, run = mlflow_run(record)
    assert run.data.tags["preflight.excluded"] == "none" and run.data.tags["preflight.result"] == "passed"
    assert 0 < run.data.metrics["phase_preflight_s"] < 60
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "preflight")}
    assert "preflight/report.txt" in artifacts
    table = Path(client.download_artifacts(run.info.run_id, "preflight/report.txt", str(tmp_path))).read_text()
    assert [line.split()[:1] for line in table.splitlines()[1:3]] == [[node] for node in slurm_cluster.nodes]
    assert "skipped: profile has no GPUs" in table and "pass: busbw" in table and "FAIL" not in table


@pytest.fixture
def node2_checkpoints_full(tmp_path, slurm_cluster):
    """``<tmp>/ckpt/<node2>`` on a full 1 MiB tmpfs, ``<tmp>/ckpt/<node1>`` a plain folder; unmounted afterwards."""
    root = tmp_path / "ckpt"
    node1, node2 = slurm_cluster.nodes
    (root / node1).mkdir(parents=True)
    (root / node2).mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / node2)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={root / node2 / 'fill'}", "bs=64k"], capture_output=True)
        yield root
    finally:
        subprocess.run(["umount", str(root / node2)], check=True)


def test_a_full_checkpoint_root_on_node2_is_named_and_a_job_placed_there_moves_to_node1(
        local_env, slurm_cluster, monkeypatch, tmp_path, digits_root, capsys, node2_checkpoints_full):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf_path))
    node1, node2 = slurm_cluster.nodes
    cluster = make_profile(tmp_path, digits_root, preflight={**CHECKS, "exclude_bad": True})
    profiles = yaml.safe_load(cluster.read_text())
    profiles["profiles"]["test"]["checkpoint_root"] = f"{node2_checkpoints_full}/%n"  # node-local roots
    cluster.write_text(yaml.safe_dump(profiles))

    # podrun preflight: the table names node2 and the storage check; node1 passes.
    assert main(["preflight", *job_args(cluster)]) == exit_codes.PREFLIGHT_FAILED
    out = capsys.readouterr().out
    assert f"{node2}: FAIL storage: checkpoint root: {node2_checkpoints_full / node2} not writable " \
           "(No space left on device)" in out
    node1_row = next(line for line in out.splitlines() if line.startswith(f"{node1} "))
    assert "FAIL" not in node1_row and "pass: data: train and val readable" in node1_row

    # A 1-node job that Slurm must place on node2 (node1 is taken) is requeued with --exclude=node2.
    blocker = slurm_cluster.run("sbatch", "--parsable", "--exclusive", f"--nodelist={node1}", "--output=/dev/null",
                                "--wrap", "sleep 600").stdout.strip()
    try:
        wait_until(lambda: slurm_cluster.job_state(blocker) == "RUNNING", "the blocker on node1", 60)
        args = job_args(cluster, "--set", "nodes=1", "--set", "train.epochs=1", "--set", "eval.target=0.01")
        assert main(["launch", *args, "--detach"]) == 0
        record = newest_record(local_env)
        wait_for_text(slurm_log(record), f"[preflight] requeueing at 1 node(s) with --exclude={node2}", timeout=120)
    finally:
        slurm_cluster.run("scancel", blocker, check=False)
    capsys.readouterr()
    line = wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert "SUCCEEDED" in line and f"nodes {node1}" in line and f"preflight excluded {node2} (storage: " in line, line
    log = slurm_log(record).read_text()
    assert f"on {node2} (slurm job {record.native_id}, restart 0)" in log
    assert f"on {node1} (slurm job {record.native_id}, restart 1)" in log and "[done] reached target" in log

    client, run = mlflow_run(record, record.checkpoint_dir.replace("%n", node1))
    assert run.data.tags["preflight.excluded"].startswith(f"{node2} (storage: checkpoint root: ")
    attempts = {a.path for a in client.list_artifacts(run.info.run_id, "preflight")}
    assert {f"preflight/slurm-{record.native_id}-0", f"preflight/slurm-{record.native_id}-1"} <= attempts
    assert os.listdir(node2_checkpoints_full / node2) == ["fill"]  # the probes left nothing behind
