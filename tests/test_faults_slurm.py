"""Faults on the Slurm backend, injected for real (docs/RELIABILITY.md).

* A rank SIGKILLed, the launcher SIGKILLed, slurmctld killed and restarted: on a Slurm
  cluster of the test's own (the shared one never sees its controller go away).
* The SSH connection to the login host dropped while ``sbatch`` runs and while logs are
  followed: through an sshd of the test's own, to the shared cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator.backends import get_backend
from orchestrator.backends.lifeline import descendants
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.faults import SETTINGS, assert_same_result, kill, podrun
from tests.fixtures.slurm import SlurmCluster, find_program
from tests.fixtures.sshd import SshServer, running_sshd
from tests.test_slurm_backend import make_profile
from tests.waiting import wait_for_text, wait_state, wait_until

pytestmark = pytest.mark.slow
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"}


def slurm_args(cluster_file: Path, *extra: str) -> list[str]:
    return ["resnet50:tiny", "--cluster-file", str(cluster_file), "--set", "cluster=test", "--set", "nodes=2",
            "--set", "tasks_per_node=1", "--backend", "slurm", *SETTINGS, *extra]


def slurm_log(record) -> Path:
    return Path(record.extra["cluster_job_dir"]) / "logs" / f"slurm-{record.native_id}.out"


class QuickRequeueCluster(SlurmCluster):
    """A Slurm cluster whose requeued jobs start again after 20 s (the shared one: 30 s).

    Its hosts are its own (tag ``f``: another bridge and subnet than the shared cluster's),
    and its job ids start at 10000, so its jobs are told apart from the shared cluster's.
    """

    cred_expire_s = 20
    first_job_id = 10000


@pytest.fixture
def own_slurm(monkeypatch) -> SlurmCluster:
    """A two-node Slurm cluster for this test alone: it will lose its controller."""
    cluster = QuickRequeueCluster("f")
    cluster.start()
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf_path))
    try:
        yield cluster
    finally:
        cluster.stop()


def restart_controller(cluster: SlurmCluster) -> None:
    """Start slurmctld again on the saved state (no ``-c``: the jobs are kept)."""
    log = open(cluster.base / "slurmctld-restarted.out", "ab")  # noqa: SIM115 - handed to the daemon
    with log:
        cluster.procs[0] = subprocess.Popen([find_program("slurmctld") or "slurmctld", "-D", "-f",
                                             str(cluster.conf_path)], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
    wait_until(lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, "slurmctld up", 60)


def test_killed_rank_requeues_and_the_job_survives_its_launcher_and_a_controller_restart(
        podrun_home, own_slurm, tmp_path, capsys, reference):
    cluster_file = make_profile(tmp_path, tmp_path)  # synthetic data: no data root
    # the requeue path: no restart inside the allocation (tests/test_faults_hosts.py covers that one)
    cli = podrun("launch", *slurm_args(cluster_file, "--set", "profile.slurm.restarts_in_allocation=0"),
                 env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = wait_until(lambda: next((r for r in list_records(podrun_home) if r.native_id), None), "the submission",
                        120)
    log = slurm_log(record)
    wait_for_text(log, "[train] epoch 2/2 step 3/8")

    # The launcher dies: nothing changes for a Slurm job. A rank dies: the job fails and requeues itself.
    kill(cli.pid)
    cli.wait()
    rank1 = int(re.search(r"\[rank 1/2\] pid (\d+)", log.read_text()).group(1))
    killed_at = time.monotonic()
    kill(rank1)
    wait_for_text(log, "ranks failed (exit", timeout=180)
    assert "requeueing" in log.read_text()
    assert time.monotonic() - killed_at < 150  # srun --kill-on-bad-exit ends the others; no hang
    wait_for_text(log, "[resume] ckpt-000000008.pt: epoch 2, step 0", timeout=300)  # requeued, restarted

    # slurmctld killed mid-job: status says so and keeps the last known state; restarted, it recovers.
    own_slurm.procs[0].kill()
    own_slurm.procs[0].wait()
    capsys.readouterr()
    assert main(["status", record.job_id]) == 0
    line = capsys.readouterr().out
    assert "slurmctld unreachable" in line and ("RUNNING" in line or "PENDING" in line), line
    restart_controller(own_slurm)
    line = wait_state(record.job_id, capsys, ENDED, timeout=400)
    # Not reaching eval.target=1.0 ends the job with exit 2, which Slurm calls FAILED.
    assert "restarts 1" in line and "finished without reaching target" in line, line
    assert main(["runs"]) == 0 and record.job_id in capsys.readouterr().out
    assert_same_result(record.checkpoint_dir, reference)  # as if nothing had happened


def drop_connections(server: SshServer) -> int:
    """Kill every session of ``server`` (not the listener): each client's connection drops."""
    sessions = descendants(server.proc.pid)
    for pid in sessions:
        kill(pid)
    return len(sessions)


def restart_sshd(server: SshServer, down_s: float) -> None:
    """sshd gone altogether for ``down_s`` seconds, then back on the same port and keys."""
    drop_connections(server)
    server.proc.kill()
    server.proc.wait()
    time.sleep(down_s)
    server.launch(30)


@pytest.fixture
def own_sshd(slurm_cluster):
    """An sshd for this test alone, on the shared cluster's login host: its connections will be cut."""
    hosts = slurm_cluster.hosts
    with running_sshd(hosts, hosts.named("login"), port=2222) as server:
        yield server


def slow_sbatch(folder: Path) -> Path:
    """An ``sbatch`` that submits, then takes 20 s to print the job id: a window to cut the connection in."""
    folder.mkdir()
    script = folder / "sbatch"
    script.write_text(f"#!/bin/bash\nout=$({find_program('sbatch')} \"$@\") || exit $?\nsleep 20\necho \"$out\"\n")
    script.chmod(0o755)
    return folder


def submissions(cluster, job_id: str) -> list[str]:
    out = cluster.run("squeue", "-h", "--states=all", "-o", "%A|%k", check=False).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.strip().endswith(f"|podrun:{job_id}")]


def test_ssh_drops_during_submit_and_log_following_lose_and_duplicate_nothing(
        podrun_home, slurm_cluster, own_sshd, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)  # only the login host knows the cluster
    wrapper = slow_sbatch(tmp_path / "bin")
    login = {"host": own_sshd.host, "port": own_sshd.port, "user": "root",
             "key_file": str(own_sshd.client_key_path), "known_hosts": str(own_sshd.known_hosts_path),
             "env": {"SLURM_CONF": str(slurm_cluster.conf_path), "PATH": f"{wrapper}:{os.environ['PATH']}"}}
    cluster_file = make_profile(tmp_path, tmp_path, login=login)  # synthetic data
    before = slurm_cluster.run("squeue", "-h", "--states=all", "-o", "%k", check=False).stdout.split()

    def cut_while_sbatch_waits() -> None:
        wait_until(lambda: set(slurm_cluster.run("squeue", "-h", "--states=all", "-o", "%k", check=False)
                               .stdout.split()) - set(before), "the submission to reach Slurm", 120)
        drop_connections(own_sshd)  # the job is queued; sbatch's reply is not back yet

    cutter = threading.Thread(target=cut_while_sbatch_waits, daemon=True)
    cutter.start()
    assert main(["launch", *slurm_args(cluster_file, "--set", "train.epochs=1"), "--detach"]) == 0
    cutter.join(timeout=10)
    err = capsys.readouterr().err
    record = list_records(podrun_home)[0]
    assert "asking Slurm whether job" in err and f"it was: Slurm job {record.native_id}" in err, err
    assert submissions(slurm_cluster, record.job_id) == [record.native_id]  # queued once, id known

    # Follow the log while the login host's sshd goes away for 5 s: retried, nothing lost or repeated.
    lines, outage = [], None
    for line in get_backend("slurm").logs(record, follow=True):
        lines.append(line)
        if outage is None and line.startswith("[train] epoch 1/1 step 2/"):
            outage = threading.Thread(target=restart_sshd, args=(own_sshd, 5.0), daemon=True)
            outage.start()  # the follower goes on meanwhile, and finds the connection gone
    outage.join(timeout=60)
    assert "retrying in" in capsys.readouterr().err
    assert lines == slurm_log(record).read_text().splitlines()  # every line, once
    assert any(line.startswith("[done] finished without reaching target") for line in lines)
    # ... and the batch script takes that for what it is, not for a failure to requeue.
    assert "[podrun] all epochs ran without reaching the target" in lines and not any("requeue" in x for x in lines)
