"""Faults on the local backend, injected for real, and what survives them (docs/RELIABILITY.md).

Each test starts the fault job (tests/faults.py), hurts it with a real signal, a real
full file system or real damage to its files, checks that the job ends in bounded time
and says what happened, then resumes it and checks the result against an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import checkpoint_problem, list_checkpoints
from orchestrator.backends.local import pid_alive
from orchestrator.backends.local_supervisor import RANK_GRACE_S
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.faults import (
    LOCAL_JOB,
    REPO,
    FileCreations,
    assert_same_result,
    job_processes,
    kill,
    podrun,
    rank_pids,
    wait_for_step,
)
from tests.waiting import wait_for_text, wait_state, wait_until

pytestmark = pytest.mark.slow
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"}


def start_detached(home: Path, *extra: str):
    assert main(["launch", *LOCAL_JOB, *extra, "--detach"]) == 0
    record = list_records(home)[0]
    return record, Path(record.job_dir) / "logs" / "rank0.log"


def wait_ended(job_id: str, capsys, timeout: float) -> tuple[str, float]:
    """The status line once the job ended, and how long that took."""
    capsys.readouterr()
    began = time.monotonic()
    line = wait_state(job_id, capsys, ENDED, timeout=timeout)
    return line, time.monotonic() - began


def assert_nothing_left(job_dir: str) -> None:
    """No process of the job runs any more (the supervisor may take a moment to exit after recording)."""
    wait_until(lambda: not job_processes(job_dir), f"every process of {job_dir} to end", 30)


def resume_and_compare(home: Path, capsys, reference, resumed_from: str) -> None:
    """``--resume`` the job to its end; it must continue from ``resumed_from`` and end as the reference did."""
    assert main(["launch", *LOCAL_JOB, "--resume"]) == exit_codes.NOT_REACHED
    resumed = list_records(home)[0]
    log = (Path(resumed.job_dir) / "logs" / "rank0.log").read_text()
    assert f"[resume] {resumed_from}: " in log, log[-2000:]
    assert_same_result(resumed.checkpoint_dir, reference)
    capsys.readouterr()


def test_sigkill_of_one_rank_fails_the_job_quickly_and_resume_matches(podrun_home, capsys, reference):
    record, log = start_detached(podrun_home)
    wait_for_step(log, 2, 3)
    kill(rank_pids(record.job_dir)[1])  # rank 1, mid-epoch: no checkpoint on the way out
    line, took = wait_ended(record.job_id, capsys, timeout=RANK_GRACE_S + 60)
    assert "FAILED" in line and "rank 1 killed by SIGKILL first" in line, line
    assert took < RANK_GRACE_S + 30
    assert_nothing_left(record.job_dir)
    resume_and_compare(podrun_home, capsys, reference, "ckpt-000000008.pt")


def test_stopped_rank_is_named_by_the_watchdog_and_resume_matches(podrun_home, capsys, reference):
    record, log = start_detached(podrun_home, "--set", "watchdog_timeout_s=20")
    wait_for_step(log, 2, 3)
    stuck = rank_pids(record.job_dir)[1]
    kill(stuck, signal.SIGSTOP)
    line, took = wait_ended(record.job_id, capsys, timeout=120)
    assert took < 20 + 60, took
    expected = f"rank 1 on host {socket.gethostname()} (pid {stuck}) stopped responding"
    assert "FAILED" in line and expected in line, line
    # Its last line (from its last heartbeat), the live rank waiting in a collective, and what the
    # Flight Recorder says: rank 0 is in a collective that rank 1 left no trace of.
    assert re.search(re.escape(expected) + r"[^;]*, its last known line [\w/.]+\.py:\d+ in \w+", line), line
    rank0 = rank_pids(record.job_dir)[0]
    assert f"rank 0 on host {socket.gethostname()} (pid {rank0}) is alive, in a collective (" in line, line
    assert re.search(r"flight recorder: process group 0 \(2 ranks\): collective #\d+ gloo:\w+ .*: reached by rank 0; "
                     r"no trace from rank 1 \(stopped", line), line
    assert "[watchdog] rank 0 made no progress" in log.read_text()
    (event,) = (Path(record.job_dir) / "hang").glob("*-rank-0")  # rank 0 asked; rank 1 could not answer
    assert (event / "stacks-rank-0.txt").exists() and not (event / "stacks-rank-1.txt").exists()
    assert "(none from rank 1: stopped or did not answer within 5 s)" in line, line
    assert list_records(podrun_home)[0].exit_code == exit_codes.STALLED
    assert_nothing_left(record.job_dir)  # the stopped rank too: it was killed
    resume_and_compare(podrun_home, capsys, reference, "ckpt-000000008.pt")


def test_gpu_ranks_get_nccl_async_error_handling_and_a_group_timeout_above_the_watchdog(tmp_path, podrun_home):
    from jobs.rank.watchdog import process_group_timeout_s
    from orchestrator.backends.local import LocalBackend
    from orchestrator.spec.resolve import load_job

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("profiles:\n  gpus: {scheduler: local, gpus_per_node: 2}\n")
    plan = load_job("resnet50:tiny", ["cluster=gpus", "watchdog_timeout_s=900"], cluster_file=str(cluster))
    assert plan.job.device == "cuda" and plan.job.watchdog_timeout_s == 900
    assert LocalBackend().render(plan).count("TORCH_NCCL_ASYNC_ERROR_HANDLING=1 ") == 2  # each rank
    assert process_group_timeout_s(900) == 960 and process_group_timeout_s(20) == 600


def test_the_launcher_dying_stops_its_job_and_a_second_resume_is_refused(podrun_home, capsys, reference, tmp_path):
    env = os.environ.copy()
    # 1. `podrun launch JOB | tee log`, then Ctrl-C: the whole foreground group gets SIGINT, tee dies with it.
    tee_log = tmp_path / "tee.log"
    command = f"python -m orchestrator launch {' '.join(LOCAL_JOB)} | tee {tee_log}"
    path = f"{Path(sys.executable).parent}:{env['PATH']}"
    # Ctrl-C as in a terminal: SIGINT's default action, even when pytest itself was started in the background
    # (`cmd &` in a script ignores SIGINT, and so would bash, the launcher and tee).
    shell = subprocess.Popen(["bash", "-c", command], env=env | {"PATH": path}, cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(lambda: list_records(podrun_home), "the job record", 120)
    first = list_records(podrun_home)[0]
    # Early in epoch 1, so that the two resumes below still have steps to train when they are hurt.
    wait_for_step(Path(first.job_dir) / "logs" / "rank0.log", 1, 2)
    # Hold the ranks until the launcher and tee are gone: on a loaded box the job's last steps
    # could otherwise end it before the stop reaches them (then there is nothing to cancel).
    ranks = rank_pids(first.job_dir)
    for pid in ranks:
        kill(pid, signal.SIGSTOP)
    os.killpg(shell.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        shell.wait(timeout=30)  # tee is gone: the launcher's next line breaks its pipe
    for pid in ranks:  # the forwarded SIGTERM is pending; it lands now
        kill(pid, signal.SIGCONT)
    line, _ = wait_ended(first.job_id, capsys, timeout=RANK_GRACE_S + 60)
    assert "CANCELLED" in line, line
    shell.wait(timeout=60)
    assert_nothing_left(first.job_dir)
    saved = list_checkpoints(Path(first.checkpoint_dir))[-1]  # it checkpointed on the way out

    # 2. An attached `--resume` whose launcher is killed: the job stops after a checkpoint, and says why.
    cli = podrun("launch", *LOCAL_JOB, "--resume", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = wait_until(lambda: next((r for r in list_records(podrun_home) if r.job_id != first.job_id), None),
                        "the second job", 120)
    wait_for_text(Path(second.job_dir) / "logs" / "rank0.log", f"[resume] {saved.name}")
    wait_for_text(Path(second.job_dir) / "logs" / "rank0.log", "[train] epoch ")
    kill(cli.pid)
    cli.wait()
    line, _ = wait_ended(second.job_id, capsys, timeout=RANK_GRACE_S + 60)
    assert "CANCELLED" in line and "its launcher (podrun launch) went away" in line, line
    assert_nothing_left(second.job_dir)

    # 3. A detached `--resume`; a second `--resume` of the same folder is refused and names the first;
    #    then its supervisor is killed: the ranks checkpoint and stop, and status says so.
    assert main(["launch", *LOCAL_JOB, "--resume", "--detach"]) == 0
    third = list_records(podrun_home)[0]
    wait_for_text(Path(third.job_dir) / "logs" / "rank0.log", "[train] epoch ")  # its signal handlers are in
    # Hold the ranks while the lock is checked and the supervisor dies: the job's last steps
    # take a second, and on a loaded box they could end it first (then there is nothing to stop).
    ranks = rank_pids(third.job_dir)
    for pid in ranks:
        kill(pid, signal.SIGSTOP)
    capsys.readouterr()
    assert main(["launch", *LOCAL_JOB, "--resume"]) == exit_codes.IN_USE
    err = capsys.readouterr().err.strip()
    assert f"is in use by job {third.job_id}" in err and f"podrun cancel {third.job_id}" in err, err
    assert len(err.splitlines()) == 1
    kill(int(third.native_id))
    wait_until(lambda: not pid_alive(int(third.native_id)), "the supervisor to die", 30)
    for pid in ranks:  # the SIGTERM of PR_SET_PDEATHSIG is pending; it lands now
        kill(pid, signal.SIGCONT)
    line, _ = wait_ended(third.job_id, capsys, timeout=RANK_GRACE_S + 60)
    assert "PREEMPTED" in line and "the supervisor is gone" in line, line
    assert_nothing_left(third.job_dir)
    main(["runs"])
    runs = capsys.readouterr().out
    assert all(job_id in runs for job_id in (first.job_id, second.job_id, third.job_id))
    assert "RUNNING" not in runs

    # 4. The last `--resume` ends where an uninterrupted run does.
    last_saved = list_checkpoints(Path(third.checkpoint_dir))[-1]
    resume_and_compare(podrun_home, capsys, reference, last_saved.name)


def test_checkpoint_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from jobs.rank.checkpoint_lock import CheckpointInUse, hold

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom jobs.rank.checkpoint_lock import hold\n"
                               f"with hold({str(tmp_path)!r}, 'first-job'):\n print('held', flush=True)\n"
                               " time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointInUse) as refused, hold(tmp_path, "second-job", wait_s=1):
            pass
        message = str(refused.value)
        assert "in use by job first-job" in message and f"pid {holder.pid} on {socket.gethostname()}" in message
        assert refused.value.exit_code == exit_codes.IN_USE
    finally:
        holder.kill()
        holder.wait()
    with hold(tmp_path, "second-job", wait_s=5):  # the kernel let go when the holder died
        pass


def test_kill_during_a_checkpoint_write_never_loads_the_partial_file(podrun_home, capsys, reference):
    record, log = start_detached(podrun_home)
    wait_for_step(log, 1, 2)
    folder = Path(record.checkpoint_dir)
    creations = FileCreations(folder)
    try:
        rank0 = rank_pids(record.job_dir)[0]
        name = creations.wait_for(".ckpt-000000016.pt.tmp-", timeout=300)  # the second checkpoint, being written
        kill(rank0, signal.SIGSTOP)
    finally:
        creations.close()
    partial = folder / name
    assert partial.exists() and not (folder / "ckpt-000000016.pt").exists()  # caught in the act
    kill(rank0)
    line, _ = wait_ended(record.job_id, capsys, timeout=RANK_GRACE_S + 60)
    assert "FAILED" in line, line
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt-000000008.pt"]
    resume_and_compare(podrun_home, capsys, reference, "ckpt-000000008.pt")
    assert not partial.exists()  # the next write cleared it


def copy_checkpoints(source: str, home: Path, job_id: str) -> Path:
    folder = home / "checkpoints" / "resnet50-tiny" / job_id
    folder.mkdir(parents=True)
    for path in Path(source).glob("ckpt-*"):
        shutil.copy2(path, folder / path.name)
    return folder


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(podrun_home, capsys, reference):
    folder = copy_checkpoints(reference["checkpoint_dir"], podrun_home, "earlier-job")
    latest = folder / "ckpt-000000016.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    assert main(["launch", *LOCAL_JOB, "--resume", "earlier-job"]) == exit_codes.NOT_REACHED
    resumed = list_records(podrun_home)[0]
    log = (Path(resumed.job_dir) / "logs" / "rank0.log").read_text()
    assert "[resume] warning: skipping" in log and "ckpt-000000016.pt: sha256" in log and "truncated" in log
    assert "[resume] warning: falling back to" in log and "[resume] ckpt-000000008.pt: epoch 2" in log
    assert_same_result(folder, reference)  # the retrained step 16 replaced the damaged one

    # Both damaged (one bit flipped in the other): a clear error before anything starts.
    for path in list_checkpoints(folder):
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["launch", *LOCAL_JOB, "--resume", "earlier-job"]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"podrun: error: --resume: no valid checkpoint in {folder}") and len(err.splitlines()) == 1


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A real 16 MiB tmpfs (room for three checkpoints of the fault job), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system under ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_during_a_checkpoint_stops_with_its_own_code_and_keeps_the_earlier_one(
        podrun_home, capsys, reference, small_filesystem):
    record, log = start_detached(podrun_home, "--set", f"profile.checkpoint_root={small_filesystem}")
    wait_for_text(log, "[checkpoint] ")  # step 8 is on disk
    wait_for_step(log, 2, 1)
    filler = fill(small_filesystem)
    line, _ = wait_ended(record.job_id, capsys, timeout=RANK_GRACE_S + 120)
    assert "FAILED" in line and "could not write a checkpoint" in line, line
    assert "No space left on device" in line and "earlier checkpoints kept: ckpt-000000008.pt" in line, line
    assert list_records(podrun_home)[0].exit_code == exit_codes.CHECKPOINT_FAILED
    folder = Path(record.checkpoint_dir)
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt-000000008.pt"]
    assert checkpoint_problem(folder / "ckpt-000000008.pt") is None  # intact: matches its checksum
    assert not list(folder.glob(".ckpt-*"))  # no partial file left behind

    filler.unlink()  # space again: the job resumes and ends as if nothing happened
    assert main(["launch", *LOCAL_JOB, "--set", f"profile.checkpoint_root={small_filesystem}", "--resume"]) \
        == exit_codes.NOT_REACHED
    assert_same_result(folder, reference)
