"""Phase accounting: the rank's clock and the launcher's breakdown (fast; real clocks, no training)."""

from __future__ import annotations

import time

import pytest

from jobs.rank.phases import PhaseClock, process_start_time
from jobs.rank.state import LoopState
from orchestrator.backends.slurm import slurm_time
from orchestrator.spec.jobstore import JobRecord
from orchestrator.studies.run_phases import breakdown_metrics, format_breakdown, phase_breakdown

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

RANK_SUM = ("startup", "lost", "data_wait", "compute", "eval", "checkpoint")


def slow_batches(count: int, delay: float):
    for index in range(count):
        time.sleep(delay)
        yield index


def test_rank_phases_add_up_to_the_rank_wall_time_across_a_resume():
    clock = PhaseClock()
    clock.origin = time.time() - 0.2  # the process started 0.2 s ago
    state = LoopState()
    clock.start_run(state.phases, state.saved_at, time.time())
    for _ in clock.waiting(slow_batches(3, 0.02)):
        time.sleep(0.03)  # "compute"
    with clock.measure("eval"):
        time.sleep(0.05)
    with clock.measure("checkpoint"):
        state.saved_at = time.time()
        state.phases = clock.totals(state.saved_at)
        time.sleep(0.02)
    first = clock.totals()
    assert first["startup"] == pytest.approx(0.2, abs=0.05)
    assert first["data_wait"] == pytest.approx(0.06, abs=0.03) and first["eval"] == pytest.approx(0.05, abs=0.02)
    assert first["train"] == pytest.approx(first["data_wait"] + first["compute"])

    time.sleep(0.1)  # preempted: requeue and start-up of the next attempt
    resumed = PhaseClock()
    resumed.start_run(state.phases, state.saved_at, time.time())
    with resumed.measure("eval"):
        time.sleep(0.02)
    now = time.time()
    totals = resumed.totals(now)
    assert totals["lost"] == pytest.approx(now - state.saved_at - 0.02, abs=0.03)
    assert sum(totals[name] for name in RANK_SUM) == pytest.approx(now - clock.origin, abs=0.01)
    assert totals["startup"] == first["startup"]


def test_nested_measures_count_once_and_process_start_is_in_the_past():
    clock = PhaseClock()
    clock.start_run({}, 0.0, time.time())
    with clock.measure("checkpoint"), clock.measure("eval"):
        time.sleep(0.03)
    totals = clock.totals()
    assert totals["eval"] == 0 and totals["checkpoint"] >= 0.03
    assert time.time() - 3600 < process_start_time() <= time.time()


def record(tmp_path, **extra) -> JobRecord:
    return JobRecord(job_id="j1", name="tiny", backend="slurm", recipe="resnet50", cluster="c",
                     job_dir=str(tmp_path / "jobs" / "j1"), checkpoint_dir=str(tmp_path / "ck"),
                     tracking_uri="sqlite:///x.db", world_size=2, submitted_at=1000.0, finished_at=1100.0,
                     extra=extra)


def test_launcher_breakdown_adds_queued_startup_and_shutdown(tmp_path):
    info = {"attempts": ["j1"], "first_origin": 1004.0, "first_run_start": 1010.0, "phases_at": 1097.0,
            "phases": {"startup": 6.0, "lost": 20.0, "data_wait": 5.0, "compute": 50.0, "eval": 10.0,
                       "checkpoint": 2.0, "train": 55.0}}
    found = phase_breakdown(record(tmp_path, started_at=1003.0), info, preflight_s=2.0)
    assert found.phases == {"queued": 3.0, "preflight": 2.0, "startup": 5.0, "data_wait": 5.0, "compute": 50.0,
                            "eval": 10.0, "checkpoint": 2.0, "lost": 20.0, "shutdown": 3.0}
    assert found.wall_s == 100.0 and found.total_s == pytest.approx(100.0)
    metrics = breakdown_metrics(found)
    assert metrics["phase_train_s"] == 55.0 and metrics["wall_time_s"] == 100.0
    assert "queued" in format_breakdown(found) and "100.0%" in format_breakdown(found)
    # Without the scheduler's start time, the first rank's start ends the queue.
    assert phase_breakdown(record(tmp_path), info).phases["queued"] == 4.0
    assert phase_breakdown(record(tmp_path), {"phases": {}}) is None


def test_slurm_times_parse_and_unknown_is_none():
    assert slurm_time("2024-05-01T12:00:03") == time.mktime((2024, 5, 1, 12, 0, 3, 0, 0, -1))
    assert slurm_time("Unknown") is None and slurm_time(None) is None
