"""Faults that only hosts with their own addresses can show, injected for real (docs/RELIABILITY.md).

A Slurm cluster of three hosts of this module's own (tests/fixtures/hosts.py): a 2-node job
runs on two of them and the third is the spare Slurm can move a requeued job to, or the
third member preflight needs to tell which host of a slow pair is slow.

* a partition (the host's link down) shorter than the collective timeout: waited out;
* one longer than the watchdog's limit: the job stops, names the rank, and ``--resume``
  ends it like an uninterrupted run;
* a host crash (every process of the host killed, its slurmd too): Slurm marks the node DOWN
  after ``SlurmdTimeout``, ends the job (NODE_FAIL) and requeues it; it resumes on the others;
* a slow link (``tc ... tbf`` on one host's port): preflight's bus-bandwidth check names it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.faults import SETTINGS, assert_same_result, podrun
from tests.fixtures.slurm import SlurmCluster
from tests.test_slurm_backend import make_profile, slurm_log
from tests.waiting import wait_for_text, wait_state, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hosts")]  # one worker, one three-host cluster
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"}
NO_RETRY = ["--set", "profile.slurm.max_failures=0", "--set", "profile.slurm.restarts_in_allocation=0"]


class ThreeHosts(SlurmCluster):
    """Three hosts (tag ``x``: a bridge and subnet of this module's own); requeues wait 10 s, SlurmdTimeout 20 s."""

    cred_expire_s = 10
    slurmd_timeout_s = 20
    first_job_id = 20000


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[SlurmCluster]:
    cluster = ThreeHosts("x", 3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_env(three_hosts, podrun_home, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("SLURM_CONF", str(three_hosts.conf_path))
    yield make_profile(tmp_path, tmp_path)  # synthetic data: no data root
    for node in three_hosts.nodes:  # leave the hosts as the next test expects them
        three_hosts.hosts.link_up(node)
        three_hosts.hosts.unlimit(node)
    three_hosts.run("scancel", "--user=root", check=False)


def args(cluster_file: Path, *extra: str) -> list[str]:
    return ["resnet50:tiny", "--cluster-file", str(cluster_file), "--set", "cluster=test", "--set", "nodes=2",
            "--set", "tasks_per_node=1", "--backend", "slurm", *SETTINGS, *extra]


def submitted(home: Path):
    return wait_until(lambda: next((r for r in list_records(home) if r.native_id), None), "the submission", 120)


def rank_hosts(log: Path | str) -> list[str]:
    """The hosts of rank 0 and rank 1, from their first lines (in a log file, or its text)."""
    text = log.read_text() if isinstance(log, Path) else log
    return [text.split(f"[rank {rank}/2] pid ")[1].split(" on ")[1].split()[0] for rank in (0, 1)]


def test_a_short_partition_is_waited_out_and_a_long_one_stops_the_job_which_resumes_to_the_same_result(
        three_hosts, cluster_env, podrun_home, capsys, reference):
    hosts = three_hosts.hosts
    for node in three_hosts.nodes:  # a third of a CPU per host (slurmd's job steps inherit it): a wider window
        hosts.slow_down(node, share=0.35)
    try:
        cli_args = args(cluster_env, "--set", "watchdog_timeout_s=20", *NO_RETRY)
        assert main(["launch", *cli_args, "--detach"]) == 0
        record = submitted(podrun_home)
        log = slurm_log(record)
        wait_for_text(log, "[train] epoch 1/2 step 2/8", timeout=300)
        rank1_host = rank_hosts(log)[1]

        # 1. A partition of 5 s, well inside the collective and watchdog timeouts: the ranks wait, then go on.
        cut = time.monotonic()
        hosts.link_down(rank1_host)
        time.sleep(5)
        hosts.link_up(rank1_host)
        wait_for_text(log, "[checkpoint]", timeout=120)  # epoch 1 ended: the run went on
        print(f"[partition] short: the link was down {time.monotonic() - cut:.1f} s")

        # 2. A partition longer than the watchdog's 20 s: the job stops, naming what did not move; the
        #    link comes back after that (so that Slurm reaches the host again and ends the job step).
        wait_for_text(log, "[train] epoch 2/2 step 1/8", timeout=120)
        hosts.link_down(rank1_host)
        wait_for_text(log, "[watchdog]", timeout=120)
        hosts.link_up(rank1_host)
        line = wait_state(record.job_id, capsys, ENDED, timeout=300)
        assert "FAILED" in line, line
        text = log.read_text()
        assert re.search(r"\[watchdog\] rank \d made no progress for \d+ s \(timeout 20 s\)", text), text[-3000:]
    finally:
        for node in three_hosts.nodes:
            hosts.link_up(node)
            hosts.full_speed(node)

    # 3. --resume: from the checkpoint of epoch 1, to the same weights as an uninterrupted run.
    capsys.readouterr()
    assert main(["launch", *args(cluster_env, *NO_RETRY), "--resume"]) == \
        exit_codes.NOT_REACHED
    resumed = list_records(podrun_home)[0]
    assert "[resume] ckpt-000000008.pt" in slurm_log(resumed).read_text()
    assert_same_result(resumed.checkpoint_dir, reference)


def test_without_restarts_inside_the_allocation_a_crashed_host_fails_the_job_which_slurm_requeues(
        three_hosts, cluster_env, podrun_home, capsys, reference):
    hosts = three_hosts.hosts
    requeue_only = ["--set", "profile.slurm.max_failures=1", "--set", "profile.slurm.restarts_in_allocation=0"]
    cli = podrun("launch", *args(cluster_env, *requeue_only), env=os.environ.copy(),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = submitted(podrun_home)
    log = slurm_log(record)
    wait_for_text(log, "[checkpoint]", timeout=300)
    crashed = rank_hosts(log)[1]  # not the batch shell's host: the script must live to requeue
    killed = hosts.crash(crashed)
    assert killed, f"nothing ran on {crashed}"
    try:
        # The survivor's collective fails at once (the kernel closed the dead ranks' sockets); the step
        # lingers on the dead host, so the script ends it after its grace period and requeues the job (or
        # Slurm, hearing nothing from the host's slurmd for SlurmdTimeout, ends it first with NODE_FAIL
        # and requeues it itself). Either way it starts again on the two hosts left.
        wait_for_text(log, "restart 1)", timeout=240)
        wait_until(lambda: three_hosts.node_states().get(crashed, "").startswith("down"), f"{crashed} DOWN", 120)
        line = wait_state(record.job_id, capsys, ENDED, timeout=600)
        assert "finished without reaching target" in line and "restarts 1" in line, line
        text = log.read_text()
        assert text.count("[resume] ckpt-000000008.pt") == 1 and crashed not in rank_hosts_after_restart(text)
        assert_same_result(record.checkpoint_dir, reference)
    finally:
        cli.kill()
        three_hosts.start_slurmd(crashed)
        wait_until(lambda: not three_hosts.node_states().get(crashed, "down").startswith("down"), "slurmd back", 60)
        three_hosts.run("scontrol", "update", f"nodename={crashed}", "state=resume", check=False)


def rank_hosts_after_restart(text: str) -> list[str]:
    """The hosts the requeued attempt's ranks ran on."""
    restarted = text.split("restart 1)", 1)[1]
    return [restarted.split(f"[rank {rank}/2] pid ")[1].split(" on ")[1].split()[0] for rank in (0, 1)]


def test_a_slow_link_is_named_by_preflight(three_hosts, cluster_env, capsys):
    hosts = three_hosts.hosts
    slow = three_hosts.nodes[2]
    profile = yaml.safe_load(cluster_env.read_text())
    # 4 MB per all-reduce: about 0.1 s over a bridge, 4 s through a 8 Mbit/s link; 30 MB/s is the line between
    profile["profiles"]["test"]["nodes"] = 3
    profile["profiles"]["test"]["preflight"] = {"enabled": True, "checks": ["collectives"], "allreduce_mb": 4,
                                                "min_busbw_gbps": 0.03}
    cluster_env.write_text(yaml.safe_dump(profile))
    hosts.limit_rate(slow, "8mbit")
    try:
        code = main(["preflight", *args(cluster_env, "--set", "nodes=3")])
    finally:
        hosts.unlimit(slow)
    out, err = capsys.readouterr()
    assert code == exit_codes.PREFLIGHT_FAILED, out + err
    failing = [line.split(":")[0] for line in out.splitlines() if "FAIL collectives" in line]
    assert failing == [slow], out


def test_a_crashed_host_is_replaced_by_the_spare_inside_the_allocation(
        three_hosts, cluster_env, podrun_home, capsys, reference):
    """With a spare node and restarts inside the allocation, a host crash costs a restart, not a requeue."""
    hosts = three_hosts.hosts
    recovery = ["--set", "profile.slurm.spare_nodes=1", "--set", "profile.slurm.restarts_in_allocation=1",
                "--set", "profile.slurm.max_failures=0"]
    assert main(["launch", *args(cluster_env, *recovery), "--detach"]) == 0
    record = submitted(podrun_home)
    log = slurm_log(record)
    wait_for_text(log, "[checkpoint]", timeout=300)
    crashed = rank_hosts(log)[1]
    crashed_at = time.monotonic()
    assert hosts.crash(crashed), f"nothing ran on {crashed}"
    try:
        wait_for_text(log, "restart 1/1 inside the allocation", timeout=240)
        wait_for_text(log, "[resume] ckpt-000000008.pt", timeout=240)
        print(f"[recovery] fault to resume: {time.monotonic() - crashed_at:.1f} s")
        line = wait_state(record.job_id, capsys, ENDED, timeout=600)
        assert "finished without reaching target" in line and "restarts 0" in line, line  # never requeued
        text = log.read_text()
        assert f"(replaced: {crashed})" in text
        restarted = text.split("restart 1/1 inside the allocation", 1)[1].split("\n", 1)[1]
        assert crashed not in rank_hosts(restarted) and three_hosts.nodes[2] in rank_hosts(restarted)  # the spare
        assert_same_result(record.checkpoint_dir, reference)
        from mlflow import MlflowClient

        from jobs.contract.checkpoint_index import read_run_info

        run = MlflowClient(record.tracking_uri).get_run(read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"])
        assert run.data.tags["restarts_in_allocation"] == "1" and run.data.tags["podrun.nodes_replaced"] == crashed
        assert run.data.metrics["phase_lost_s"] > 0
    finally:
        three_hosts.start_slurmd(crashed)
        wait_until(lambda: not three_hosts.node_states().get(crashed, "down").startswith("down"), "slurmd back", 60)
        three_hosts.run("scontrol", "update", f"nodename={crashed}", "state=resume", check=False)
