"""The straggler check (jobs/rank/stragglers.py): the comparison, its clock, its files, and a slowed rank.

The comparison and the files are unit tests. ``test_step_wall_time_and_the_compute_clock_would_not_have_named_
the_slow_rank`` runs two gloo ranks with DDP, one slowed, to show why the check has a clock of its own;
the last test slows one local rank with a cgroup CPU quota and runs the real loop to exit 8.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from jobs.contract import exit_codes
from jobs.contract.job import StragglerConfig
from jobs.rank.stragglers import (
    REPLACE_FILE,
    STATUS_FILE,
    LocalClock,
    StragglerCheck,
    Stragglers,
    ratios_to_median,
    read_status_note,
    status_note,
)


def named_over(check: StragglerCheck, windows: list[list[float]]) -> list[list[int]]:
    """The ranks named in each window (the first window that names them)."""
    return [check.observe(seconds).named for seconds in windows]


@pytest.mark.fast
def test_each_rank_is_compared_with_the_median_of_all():
    assert ratios_to_median([1.0, 1.0, 1.6]) == pytest.approx([1.0, 1.0, 1.6])  # odd: the middle one
    assert ratios_to_median([1.0, 2.0, 3.0, 4.0]) == pytest.approx([0.4, 0.8, 1.2, 1.6])  # even: between the two
    assert ratios_to_median([0.0, 0.0, 5.0]) == [1.0, 1.0, 1.0]  # nothing measured: nobody is slow
    # one slow rank among many does not move the median (a mean would hide it at 1,536 ranks)
    assert ratios_to_median([1.0] * 1535 + [1.6])[-1] == pytest.approx(1.6)


@pytest.mark.fast
def test_a_rank_is_named_at_the_threshold_after_window_windows_in_a_row():
    check = StragglerCheck(threshold=1.2, window=3)
    slow, just_under, fine = [1.0, 1.0, 1.2], [1.0, 1.0, 1.19], [1.0, 1.0, 1.0]
    assert named_over(check, [slow, slow, slow]) == [[], [], [2]]  # at 1.2x exactly it counts
    assert named_over(StragglerCheck(1.2, 3), [slow, slow, just_under, slow, slow]) == [[], [], [], [], []]
    assert named_over(StragglerCheck(1.2, 1), [fine, slow]) == [[], [2]]
    # named once; recovered when a window is within the threshold; named again after a new streak
    found = [check.observe(seconds) for seconds in (slow, fine, slow, slow, slow)]
    assert [(f.named, f.recovered, f.current) for f in found] == [
        ([], [], [2]), ([], [2], []), ([], [], []), ([], [], []), ([2], [], [2])]
    assert found[-1].worst == pytest.approx(1.2)


@pytest.mark.fast
def test_step_wall_time_alone_names_nobody():
    """The counter-example: in synchronous DDP every rank's step ends together, so wall times are equal.

    Recorded by the two-rank test below: rank 1 computes 40x longer, yet both step for the same time.
    """
    check = StragglerCheck(threshold=1.2, window=2)
    wall, work = [0.333, 0.332], [0.008, 0.310]  # seconds per window: step wall time, and this module's clock
    assert [check.observe(wall).named for _ in range(3)] == [[], [], []]
    check = StragglerCheck(threshold=1.2, window=2)
    assert [check.observe(work).named for _ in range(3)] == [[], [1], []]


def stragglers(tmp_path: Path, world_size: int = 3, rank: int = 0, **config) -> Stragglers:
    found = Stragglers(StragglerConfig(window=2, **config), rank, world_size, torch.device("cpu"), tmp_path)
    found.hosts = [f"host{i + 1}" for i in range(world_size)]
    return found


@pytest.mark.fast
def test_each_rank_fills_its_own_slot_and_the_first_window_is_not_compared(tmp_path):
    check = stragglers(tmp_path, rank=1)
    check.clock.begin()
    time.sleep(0.02)
    check.clock.ready()
    check.clock.ready()  # a second mark in the same micro-step (DDP's hook came first): ignored
    slots = check.slots(items=4, data_wait_s=0.04)
    assert slots[0] == slots[2] == 0.0 and slots[1] == pytest.approx(0.015, abs=0.003)  # (0.02 + 0.04) / 4 items
    assert check.compare([1.0, 1.0, 3.0], step=1) is None  # warm-up
    assert check.compare([1.0, 1.0, 3.0], step=2).named == []
    assert check.compare([1.0, 1.0, 3.0], step=3).named == [2]
    assert check.named == {2: {"rank": 2, "host": "host3", "ratio": 3.0, "step": 3, "now": True}}
    assert check.replace_reason == ""  # warn
    for off in (Stragglers(StragglerConfig(enabled=False), 0, 2, torch.device("cpu"), tmp_path),
                Stragglers(StragglerConfig(), 0, 1, torch.device("cpu"), tmp_path)):
        assert off.slots(4, 1.0) == [] and off.compare([], 1) is None  # off, or one rank: nothing to compare


@pytest.mark.fast
def test_rank_zero_names_the_straggler_in_the_console_the_status_file_and_replace_json(tmp_path):
    check, lines = stragglers(tmp_path, action="replace"), []
    for step, seconds in enumerate(([1.0, 1.0, 1.6],) * 3, start=1):
        found = check.compare(seconds, step)
        tag = check.record(found, lines.append) if found else None
    assert lines == ["[straggler] rank 2 on host3: 1.6x the median (2 log windows in a row at 1.2x or more; "
                     "action replace)",
                     "[straggler] stopping after a checkpoint to replace host3 (exit 8)"]
    assert tag == "rank 2 on host3, 1.6x the median at step 3"
    assert check.replace_reason == "rank 2 on host3: 1.6x the median"  # every rank has it: the loop stops
    assert json.loads((tmp_path / REPLACE_FILE).read_text()) == {"hosts": ["host3"],
                                                                 "reason": "rank 2 on host3: 1.6x the median"}
    assert read_status_note(tmp_path) == "; straggler: rank 2 on host3, 1.6x the median at step 3"
    check.record(check.compare([1.0, 1.0, 1.0], 4), lines.append)
    assert lines[-1] == "[straggler] rank 2 on host3: back to 1.0x the median"
    assert read_status_note(tmp_path).endswith("at step 3 (recovered)")
    assert json.loads((tmp_path / STATUS_FILE).read_text())["action"] == "replace"


@pytest.mark.fast
def test_a_missing_or_malformed_status_file_adds_nothing_to_the_status(tmp_path):
    assert read_status_note(tmp_path) == ""
    for text in (None, "", "{", "[]", '{"named": 3}', '{"named": [1, 2]}'):
        assert status_note(text) == "", text


@pytest.mark.fast
def test_on_a_gpu_the_clock_reads_device_time_from_completed_events_only():
    """With a stand-in device (tests/test_phases.py's): 0.1 s of queued work before each ready mark."""
    from tests.test_phases import FakeCuda

    cuda = FakeCuda()
    clock = LocalClock(torch.device("cuda"), cuda=cuda)
    for _ in range(2):
        clock.begin()
        cuda.launch(0.1)  # forward and backward, queued
        clock.ready()  # from DDP's hook: an event behind the backward kernels
    assert clock.window_s() == pytest.approx(0.0, abs=0.01)  # neither pair has completed: no wait for them
    time.sleep(max(cuda.busy_until - time.perf_counter(), 0.0))  # the loss read at the log boundary
    assert clock.window_s() == pytest.approx(0.2, abs=0.02)
    assert cuda.event_waits == 0 and cuda.stream_syncs == 0


@pytest.mark.fast
def test_the_job_spec_key_resolves_and_the_default_leaves_scripts_as_they_were(podrun_home):
    from jobs.contract.job import dump_resolved
    from orchestrator.errors import ConfigError
    from orchestrator.spec.jobspec import dump_plan
    from orchestrator.spec.resolve import load_job

    plan = load_job("resnet50:tiny", ["straggler.window=2", "straggler.action=replace"])
    assert plan.job.straggler == StragglerConfig(window=2, action="replace")
    assert "straggler:" in dump_resolved(plan.job) and "straggler:" in dump_plan(plan)
    assert load_job("resnet50:tiny", ["straggler=false"]).job.straggler.enabled is False
    default = load_job("resnet50:tiny")
    assert "straggler" not in dump_resolved(default.job) + dump_plan(default)  # golden scripts unchanged
    with pytest.raises(ConfigError, match=r"straggler.action.*'warn' or 'replace'"):
        load_job("resnet50:tiny", ["straggler.action=kill"])


# ---------------------------------------------------------------------------------- two real ranks


def ddp_worker(rank: int, port: int, queue) -> None:
    """One of two gloo ranks: rank 1's forward sleeps 30 ms. Per rank: step wall, phase compute, this clock."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from jobs.rank.phases import HostCompute

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)

        def forward(self, x):
            if rank == 1:
                time.sleep(0.03)
            return self.b(torch.relu(self.a(x)))

    model = DistributedDataParallel(Model())
    check = Stragglers(StragglerConfig(), rank, 2, torch.device("cpu"), Path("."))
    check.attach(model)
    compute = HostCompute()  # the phase clock's compute: around forward, backward and the step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    windows, last = [], time.perf_counter()
    for step in range(1, 13):
        with compute:
            check.clock.begin()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            check.clock.ready()
            optimizer.step()
            optimizer.zero_grad()
        if step % 4 == 0:  # a log window of 4 steps
            now = time.perf_counter()
            windows.append((now - last, sum(end - start for start, end in compute.drain(False)),
                            check.clock.window_s()))
            last = now
    queue.put((rank, windows))
    dist.destroy_process_group()


def test_step_wall_time_and_the_compute_clock_would_not_have_named_the_slow_rank():
    import torch.multiprocessing as mp

    from jobs.contract.placement import free_port

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    procs = [context.Process(target=ddp_worker, args=(rank, port, queue)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    found = dict(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    verdicts = {}
    for index, clock in enumerate(("wall", "compute", "local")):
        check = StragglerCheck(threshold=1.2, window=2)
        verdicts[clock] = [check.observe([found[0][w][index], found[1][w][index]]).current for w in range(1, 3)]
    print({rank: [tuple(round(v, 3) for v in w) for w in windows] for rank, windows in found.items()})
    # both ranks step at rank 1's pace; DDP's all-reduce inside backward() hides the wait in compute
    assert verdicts == {"wall": [[], []], "compute": [[], []], "local": [[], [1]]}
    assert found[1][2][2] > 0.1 > 10 * found[0][2][2]  # 4 x 30 ms of sleep, against well under 10 ms


# ---------------------------------------------------------------------------------- the real loop, locally


@pytest.mark.slow
def test_a_slowed_local_rank_is_named_and_replace_stops_the_job_after_a_checkpoint_with_exit_8(local_env, capsys):
    """Rank 1 under a cgroup CPU quota (a twentieth of a CPU) from step 2: named, replace.json, exit 8 on every rank.

    Two ranks: the median is their mean, so 1.2x the median is 1.5x the other rank.
    """
    import socket

    from mlflow.tracking import MlflowClient

    from jobs.contract.checkpoint_index import read_run_info
    from orchestrator.spec.jobstore import list_records
    from tests.faults import SETTINGS, podrun
    from tests.fixtures.hosts import Hosts
    from tests.waiting import wait_for_text, wait_state, wait_until

    quota = Hosts("x2", 1)  # only for its cgroup quota (tests/test_stragglers_hosts.py's tag): no namespaces made
    cli = podrun("launch", "resnet50:tiny", "--set", "tasks_per_node=2", *SETTINGS, "--set", "straggler.window=2",
                 "--set", "straggler.action=replace", env=os.environ.copy(), stdout=subprocess.DEVNULL)
    try:
        record = wait_until(lambda: next(iter(list_records(local_env)), None), "the job", 60)
        logs, replace = Path(record.job_dir) / "logs", Path(record.job_dir) / REPLACE_FILE
        wait_for_text(logs / "rank0.log", "[train] epoch 1/2 step 1/8", timeout=120)  # the first window: warm-up
        pid = re.search(r"\[rank 1/2\] pid (\d+)", (logs / "rank1.log").read_text()).group(1)
        quota.slow_down("local", share=0.05, pids=[int(pid)])
        # The last step rank 0 finished once the quota is on (the ranks move in step, through DDP's all-reduce).
        slowed_after = max(map(int, re.findall(r"\[train\] epoch 1/2 step (\d+)/8", (logs / "rank0.log").read_text())))
        wait_until(replace.exists, "replace.json", 120, 0.2)
        quota.full_speed("local")  # named: the rest of the test need not wait for it
        assert cli.wait(timeout=120) == exit_codes.REPLACE
    finally:
        cli.kill()
        quota.full_speed("local")
    log = (logs / "rank0.log").read_text()
    host = socket.gethostname()
    assert re.search(rf"\[straggler\] rank 1 on {host}: \d+\.\dx the median", log), log[-3000:]
    assert "[stop] to replace a straggler (rank 1 on" in log and "[checkpoint]" in log, log[-3000:]
    assert json.loads(replace.read_text())["hosts"] == [host]
    named = json.loads((Path(record.job_dir) / STATUS_FILE).read_text())["named"]
    # Named after 2 slow log windows: the step under way when the quota came may be mostly at full speed, the
    # next two are slow. (A fixed "step <= 4" assumed the quota lands at step 2: on a fast box the ranks are further.)
    assert [entry["rank"] for entry in named] == [1] and named[0]["step"] <= slowed_after + 3, (named, slowed_after)
    line = wait_state(record.job_id, capsys, {"PREEMPTED"}, timeout=10)
    assert "stopped after a checkpoint to replace a straggling node" in line and "straggler: rank 1 on" in line
    client, run_id = MlflowClient(record.tracking_uri), read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"]
    assert client.get_run(run_id).data.tags["podrun.stragglers"].startswith(f"rank 1 on {host}, ")
    ratios = {metric.step: metric.value for metric in client.get_metric_history(run_id, "straggler_ratio")}
    step = named[0]["step"]  # the second slow window in a row (step 1 is not compared), as on Ray
    assert ratios[step - 1] >= 1.2 and ratios[step] >= 1.2 and ratios.get(step - 2, 0.0) < 1.2, (step, ratios)
