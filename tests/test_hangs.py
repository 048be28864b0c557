"""Hangs named: where each rank is, every live rank's stacks, and the collective the job hangs in.

* the heartbeat's line and state, and the watchdog's message for a thousand ranks (hand-made beats);
* the Flight Recorder: its settings under the names the installed torch reads (from torch's
  own headers), a hand-made NCCL dump in torch's documented format, a planted pickle;
* two real gloo ranks with their watchdogs, one held in a Python sleep: the message names
  both, both dump their stacks through the job folder, and the Flight Recorder (which records
  gloo in this torch) names the all-reduce and the rank missing from it;
* the fault job on the local backend with rank 1 held in a sleep inside its training step
  (tests/hang_hook/sitecustomize.py): the job stops with exit 6, names both ranks, and the
  stacks reach the job folder and MLflow. The stopped rank (SIGSTOP) is
  tests/test_faults_local.py::test_stopped_rank_is_named_by_the_watchdog_and_resume_matches.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from jobs.contract.placement import free_port
from jobs.rank.flight_recorder import dump_file_env, missing_from_collective, read_dump, read_dumps
from jobs.rank.hang_names import where_is
from jobs.rank.watchdog import Watchdog, collective_fault_env
from tests.faults import LOCAL_JOB, REPO, job_processes, rank_pids, wait_for_step
from tests.waiting import wait_state, wait_until

TORCH_C10D = Path(__import__("torch").__file__).parent / "include/torch/csrc/distributed/c10d"
HOOK = REPO / "tests" / "hang_hook"


def sleep_in_step(seconds: float) -> None:
    time.sleep(seconds)  # the line the tests find in a held rank's stack


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ------------------------------------------------------------------ where a rank is, and the message


@pytest.mark.fast
def test_a_heartbeat_names_the_line_and_whether_the_thread_waits_in_a_collective(tmp_path):
    held = threading.Thread(target=sleep_in_step, args=(5,), daemon=True)
    held.start()
    time.sleep(0.2)
    where = where_is(sys._current_frames()[held.ident], world_size=2)
    line = line_of(Path(__file__), "time.sleep(seconds)  # the line")
    assert where["state"] == "running" and where["line"] == f"tests/test_hangs.py:{line} in sleep_in_step"
    assert where["code"].startswith("time.sleep(seconds)") and "caller" not in where  # it is our own code

    dog = Watchdog(tmp_path, 0, 2, 10, on_stall=lambda *_: None)
    dog._loop_ident = held.ident
    dog.folder.mkdir()
    dog._beat()
    beat = json.loads((tmp_path / "heartbeats" / "rank-0.json").read_text())
    assert beat["line"] == where["line"] and beat["state"] == "running" and beat["host"] == socket.gethostname()


def beat(rank: int, state: str = "collective", age: float = 0.0, position: int = 40, **where: str) -> dict:
    line = {"collective": "torch/distributed/distributed_c10d.py:3252 in all_reduce",
            "running": "jobs/data/loader.py:88 in _read"}.get(state, "?")
    return {"rank": rank, "host": f"node{rank // 8:03d}", "pid": 1000 + rank, "position": position,
            "time": time.time() - age, "state": state, "line": line, "collective": "torch.distributed all_reduce",
            **where}


@pytest.mark.fast
def test_the_message_names_each_rank_that_does_not_progress_and_stays_one_line_at_a_thousand_ranks(tmp_path):
    world = 1024
    beats = {rank: beat(rank) for rank in range(world)}
    beats[517] = beat(517, "running", age=120, line="jobs/train.py:330 in _micro_step", code="loss.backward()")
    beats[900] = beat(900, "running", caller="jobs/train.py:310 in _train_epoch")
    beats[3] = beat(3, position=39)
    del beats[1000]
    dog = Watchdog(tmp_path, 0, world, 20, on_stall=lambda *_: None)
    message = dog.diagnose(25, beats)
    assert message.startswith("rank 0 made no progress for 25 s (timeout 20 s); ")
    assert ("rank 517 on host node064 (pid 1517) stopped responding: its last heartbeat is 120 s old (stopped, "
            "frozen, or its host is down), its last known line jobs/train.py:330 in _micro_step [loss.backward()]") \
        in message
    assert "rank 1000 never wrote a heartbeat" in message
    assert ("rank 3 on host node000 (pid 1003) is alive but never reached micro-batch 40 (it is at 39), at torch/"
            "distributed/distributed_c10d.py:3252 in all_reduce") in message
    assert ("rank 900 on host node112 (pid 1900) is alive but not in the collective the others wait in (it hangs "
            "in its own code or I/O), at jobs/data/loader.py:88 in _read, called from jobs/train.py:310") in message
    # The many ranks that wait: one part per line they wait at (a few are named one by one).
    assert message.endswith("; ranks 0-2, 4-516, 518-899, 901-999, 1001-1023 on 128 hosts: alive, in a "
                            "collective (torch.distributed all_reduce), at torch/distributed/distributed_c10d.py:3252 "
                            "in all_reduce")
    assert message.index("rank 517") < message.index("rank 3 ") < message.index("ranks 0-2")  # culprits first
    assert "\n" not in message and len(message) < 2000

    every = Watchdog(tmp_path, 0, 2, 20, on_stall=lambda *_: None).diagnose(25, {0: beat(0), 1: beat(1)})
    assert "all 2 ranks are alive in a collective at micro-batch 40 and none moves" in every
    assert "; rank 1 on host node000 (pid 1001) is alive, in a collective (torch.distributed all_reduce), at " in every


@pytest.mark.fast
def test_stop_waits_while_the_watchdog_ends_the_process(tmp_path):
    """The loop's thread, freed when another rank goes away, must not reach the tracker meanwhile."""
    ended = threading.Event()

    def on_stall(note: str, folder: Path | None) -> None:
        time.sleep(1.0)  # the tracker's last records
        ended.set()

    dog = Watchdog(tmp_path, 0, 1, 0.5, on_stall)
    dog.start()
    wait_until(lambda: dog._ending.locked(), "the watchdog to fire", 10, every=0.05)
    dog.stop()
    assert ended.is_set()
    assert (tmp_path / "hang").is_dir() and list((tmp_path / "hang").glob("*/stacks-rank-0.txt"))


# ------------------------------------------------------------------ the Flight Recorder


@pytest.mark.fast
def test_flight_recorder_settings_are_the_names_the_installed_torch_reads(tmp_path):
    env = collective_fault_env()
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert env["TORCH_FR_BUFFER_SIZE"] == env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "2000"
    dump = dump_file_env(tmp_path / "hang")
    assert dump["TORCH_FR_DUMP_TEMP_FILE"] == dump["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == \
        str(tmp_path / "hang" / "nccl-timeout-rank-")
    # torch's own source (the headers this wheel ships): each new name with its old one as the fallback
    recorder = (TORCH_C10D / "FlightRecorder.hpp").read_text()
    nccl = (TORCH_C10D / "ProcessGroupNCCL.hpp").read_text()
    assert '{"TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"}' in recorder
    for name in ("TORCH_NCCL_DUMP_ON_TIMEOUT", "TORCH_NCCL_ENABLE_MONITORING", "TORCH_NCCL_ASYNC_ERROR_HANDLING"):
        assert f'"{name}"' in nccl, name
    # the dump file's prefix is read in the library (no header names it): the names are in its strings
    library = next((TORCH_C10D.parents[4] / "lib").glob("libtorch_cpu.so*"))
    with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text:
        assert text.find(b"TORCH_FR_DUMP_TEMP_FILE") >= 0 and text.find(b"TORCH_NCCL_DEBUG_INFO_TEMP_FILE") >= 0


def nccl_entry(seq: int, state: str = "completed", name: str = "nccl:all_reduce", group: str = "0") -> dict:
    """One entry as torch's Flight Recorder tutorial documents it (version 2.x)."""
    return {"frames": [{"name": "_micro_step", "filename": "/work/jobs/train.py", "line": 334}],
            "record_id": seq, "pg_id": int(group), "process_group": (group, "default_pg"), "collective_seq_id": seq,
            "p2p_seq_id": 0, "op_id": seq, "profiling_name": name, "time_created_ns": 1724779239936775119 + seq,
            "input_sizes": [[1024, 1024]], "input_dtypes": ["Float"], "output_sizes": [[1024, 1024]],
            "output_dtypes": ["Float"], "state": state, "time_discovered_started_ns": None,
            "time_discovered_completed_ns": None, "retired": state == "completed", "timeout_ms": 600000,
            "is_p2p": False}


def nccl_dump(*entries: dict) -> dict:
    return {"version": "2.3", "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2, 3]"}},
            "pg_status": {"0": {"last_enqueued_collective": entries[-1]["collective_seq_id"],
                                "last_started_collective": -1, "last_completed_collective": 1}},
            "entries": list(entries)}


@pytest.mark.fast
def test_nccl_dumps_name_the_hung_collective_and_the_ranks_missing_from_it(tmp_path):
    hung = [nccl_entry(55), nccl_entry(56), nccl_entry(57, "started")]
    files = {0: nccl_dump(*hung), 1: nccl_dump(*hung), 2: nccl_dump(nccl_entry(55), nccl_entry(56))}
    for rank, dump in files.items():  # rank 3 left none (stopped); rank 1's came from NCCL's own timeout
        name = f"nccl-timeout-rank-{rank}" if rank == 1 else f"flight-recorder-nccl-rank-{rank}"
        (tmp_path / name).write_bytes(pickle.dumps(dump))
    (tmp_path / "flight-recorder-nccl-rank-9").write_bytes(b"not a pickle")
    dumps = read_dumps([tmp_path])
    assert sorted(dumps) == [0, 1, 2]
    (line,) = missing_from_collective(dumps, world_size=4)
    assert line == ("process group 0 (4 ranks): collective #57 nccl:all_reduce (inputs [[1024, 1024]], started), "
                    "called from train.py:334 in _micro_step: reached by ranks 0-1; missing rank 2 (its last: #56 "
                    "nccl:all_reduce); no trace from rank 3 (stopped, or it did not answer)")

    idle = {rank: [nccl_dump(nccl_entry(56), nccl_entry(57))] for rank in range(4)}
    assert missing_from_collective(idle, world_size=4) == []  # every rank finished it: nothing hangs
    stuck = {rank: [nccl_dump(nccl_entry(57, "started"))] for rank in range(4)}
    assert "every rank is in it and it does not complete" in missing_from_collective(stuck, world_size=4)[0]


@pytest.mark.fast
def test_a_planted_dump_that_names_a_class_is_not_loaded(tmp_path):
    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "nccl-timeout-rank-0"
    path.write_bytes(pickle.dumps({"entries": [Planted()]}))
    assert read_dump(path) is None and not (tmp_path / "ran").exists()


# ------------------------------------------------------------------ two real gloo ranks


WORKER = """
import json, os, sys, time
from datetime import timedelta
from pathlib import Path
import torch, torch.distributed as dist
from jobs.rank.watchdog import Watchdog
from tests.test_hangs import sleep_in_step

job_dir, rank, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=timedelta(seconds=60))
tensor = torch.ones(4)
dist.all_reduce(tensor)  # collective #1, on both ranks

def on_stall(note, folder):
    (job_dir / f"stalled-{rank}.json").write_text(json.dumps({"note": note, "folder": str(folder)}))
    os._exit(6)

watchdog = Watchdog(job_dir, rank, 2, 2.0, on_stall, records_hangs=rank == 0)
watchdog.start()
watchdog.progress(0)
try:
    if rank == 1:
        sleep_in_step(60)  # alive, its watchdog thread running, never in collective #2
    dist.all_reduce(tensor)  # collective #2: rank 0 waits in it
finally:  # as the trainer's end does: if the other rank ended first, wait for this one's watchdog
    watchdog.stop()
"""


@pytest.mark.fast
def test_two_gloo_ranks_one_asleep_are_named_and_dump_their_stacks_and_flight_recorder(tmp_path):
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(rank), str(port)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=120)[0] for proc in ranks]
    assert [proc.returncode for proc in ranks] == [6, 6], outputs
    sleep_line = line_of(Path(__file__), "time.sleep(seconds)  # the line")
    for rank, output in enumerate(outputs):  # each fired (or rank 0 followed rank 1): the same verdict
        note = json.loads((tmp_path / f"stalled-{rank}.json").read_text())["note"]
        assert (f"rank 1 on host {socket.gethostname()} (pid {ranks[1].pid}) is alive but not in the collective "
                f"the others wait in (it hangs in its own code or I/O), at tests/test_hangs.py:{sleep_line} in "
                "sleep_in_step [time.sleep(seconds)") in note, output
        assert (f"rank 0 on host {socket.gethostname()} (pid {ranks[0].pid}) is alive, in a collective "
                "(torch.distributed all_reduce), at torch/distributed/distributed_c10d.py:") in note, output
        assert ("flight recorder: process group 0 (2 ranks): collective #2 gloo:all_reduce (inputs [[4]], "
                "scheduled): reached by rank 0; missing rank 1 (its last: #1 gloo:all_reduce)") in note, output
        assert "[watchdog] stacks of ranks 0-1 in " in output or "'s watchdog stopped the job" in output, output
    events = sorted((tmp_path / "hang").iterdir())
    for event in events:
        stacks = (event / "stacks-rank-1.txt").read_text()
        assert f'File "{__file__}", line {sleep_line} in sleep_in_step' in stacks, stacks
        assert "# the loop: " in stacks and (event / "stacks-rank-0.txt").exists()
        assert sorted(p.name for p in event.glob("flight-recorder-*")) == \
            ["flight-recorder-cpu-rank-0", "flight-recorder-cpu-rank-1"]


# ------------------------------------------------------------------ the fault job, rank 1 asleep in its step


@pytest.mark.slow
def test_a_rank_asleep_in_its_step_is_named_with_its_stack_in_the_job_folder_and_mlflow(
        podrun_home, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from jobs.contract.checkpoint_index import read_run_info
    from orchestrator.cli import main
    from orchestrator.spec.jobstore import list_records

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PODRUN_TEST_SLEEP_RANK", "1")
    monkeypatch.setenv("PODRUN_TEST_SLEEP_AT", "3")  # the 4th micro-batch of epoch 1
    monkeypatch.setenv("PODRUN_TEST_SLEEP_S", "600")
    assert main(["launch", *LOCAL_JOB, "--set", "watchdog_timeout_s=10", "--detach"]) == 0
    record = list_records(podrun_home)[0]
    log = Path(record.job_dir) / "logs" / "rank0.log"
    wait_for_step(log, 1, 3)
    pids = rank_pids(record.job_dir)
    line = wait_state(record.job_id, capsys, {"FAILED", "SUCCEEDED", "CANCELLED", "PREEMPTED"}, timeout=120)
    assert list_records(podrun_home)[0].exit_code == exit_codes.STALLED, line
    host, hook_line = socket.gethostname(), line_of(HOOK / "sitecustomize.py", "time.sleep(seconds)")
    assert (f"rank 1 on host {host} (pid {pids[1]}) is alive but not in the collective the others wait in (it hangs "
            f"in its own code or I/O), at tests/hang_hook/sitecustomize.py:{hook_line} in sleep_in_step") in line, line
    assert f"rank 0 on host {host} (pid {pids[0]}) is alive, in a collective (" in line, line
    assert "flight recorder: process group 0 (2 ranks): collective #" in line and "missing rank 1" in line, line
    wait_until(lambda: not job_processes(record.job_dir), "every process of the job to end", 30)

    # Both watchdogs may fire (rank 1's does not move either): an event folder each, each with both stacks.
    # One folder per watchdog that fired: each names its own rank, none twice.
    events = [path for path in (Path(record.job_dir) / "hang").iterdir() if path.is_dir()]
    requesters = sorted(json.loads((event / "request.json").read_text())["rank"] for event in events)
    assert requesters in ([0], [1], [0, 1]), (requesters, events)
    for event in events:
        stacks = (event / "stacks-rank-1.txt").read_text()
        assert f'sitecustomize.py", line {hook_line} in sleep_in_step' in stacks, stacks
        assert "jobs/train.py" in stacks and (event / "stacks-rank-0.txt").exists()
    client = MlflowClient(record.tracking_uri)
    run_id = read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"]
    (logged,) = [Path(a.path).name for a in client.list_artifacts(run_id, "hang")]  # rank 0 logs the one it saw
    assert logged in {event.name for event in events}
    files = {Path(a.path).name for a in client.list_artifacts(run_id, f"hang/{logged}")}
    assert {"stacks-rank-0.txt", "stacks-rank-1.txt", "request.json", "summary.json"} <= files, files
    assert client.get_run(run_id).data.tags["status"] == exit_codes.DESCRIPTIONS[exit_codes.STALLED]
