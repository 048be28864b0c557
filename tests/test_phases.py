"""Phase accounting: each phase measured by its own clock, through the real training loop.

The loop tests run :class:`jobs.train.Trainer` in this process (1 rank, CPU, the tiny ResNet
on synthetic data, 24 optimizer steps) and slow one thing down by a known amount: the loader
(a test-only delay before each batch), or the checkpoint write. That time must land in its
own phase and nowhere else, and ``other`` (what no clock measured) must stay under 3% of the
rank's time from ``run_start`` to ``run_stop``. The rank's MLflow calls go to a recording
stand-in: the real sender process would compete for the 2 cores the timings run on
(tests/test_local_run.py checks ``phase_other_s`` in a real MLflow store).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import latest_checkpoint, read_run_info
from jobs.contract.job import ResolvedJob
from jobs.contract.placement import RankInfo
from jobs.rank.phases import RANK_PHASES, DeviceCompute, PhaseClock, overlap_s, process_start_time
from jobs.rank.state import LoopState
from orchestrator.backends.slurm import slurm_time
from orchestrator.spec.jobstore import JobRecord
from orchestrator.studies.run_phases import breakdown_metrics, format_breakdown, phase_breakdown

BATCHES = 24  # 2 epochs of 12 batches of 16
TINY = ["tasks_per_node=1", "data.backend=synthetic", "data.synthetic_samples=192", "train.batch_size=16",
        "train.epochs=2", "eval.target=1.0", "optim.base_lr=0.001", "eval.start_epoch=1", "train.log_every=4"]
OTHER_SHARE = 0.03  # the most of a rank's run_start-to-run_stop time that no clock may account for


class RecordingTracker:
    """Rank 0's MLflow tracker, keeping the metrics it is given (no sender process)."""

    run_id = None

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics |= metrics

    def finish(self, status: str, after_release: tuple = ()) -> bool:
        return True

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None  # params, tags, artifacts, records


@pytest.fixture
def loop(podrun_home, monkeypatch):
    """Run the tiny job through the real loop: ``loop(*settings, job=None)`` -> (exit code, trainer, rank seconds).

    ``job`` runs that job again (it resumes from its latest checkpoint).
    """
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}

    def run(*settings: str, job: ResolvedJob | None = None):
        from jobs.run import rank_device
        from jobs.train import Trainer
        from orchestrator.spec.resolve import load_job

        job = job or load_job("resnet50:tiny", [*TINY, *settings]).job
        info = RankInfo(0, 1, 0)
        trainer = Trainer(job, info, rank_device(job, info), tracker=RecordingTracker())
        code = trainer.run()
        run_info = read_run_info(Path(job.checkpoint_dir))
        return code, trainer, run_info["phases_at"] - run_info["first_run_start"]

    yield run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


class Spy:
    """Seconds spent inside the calls of one method, timed around them (the test's own clock)."""

    def __init__(self, monkeypatch, owner, name: str, delay: float = 0.0) -> None:
        self.seconds, self.calls, original = 0.0, 0, getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            time.sleep(delay)
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        monkeypatch.setattr(owner, name, timed)


def slow_loader(monkeypatch, delay: float) -> list[float]:
    """Make the training loader sleep ``delay`` before each batch; returns the seconds it spent per batch."""
    from jobs.data.images import SyntheticLoader

    spent, original = [], SyntheticLoader.epoch

    def epoch(self, current, skip=0):
        batches = original(self, current, skip)
        while True:
            started = time.perf_counter()
            if self.train:
                time.sleep(delay)
            batch = next(batches, None)
            spent.append(time.perf_counter() - started)
            if batch is None:
                return
            yield batch

    monkeypatch.setattr(SyntheticLoader, "epoch", epoch)
    return spent


def assert_other_is_small(phases: dict[str, float], rank_s: float) -> None:
    # Below 0 would mean two clocks counted the same seconds (on CPU no two run at once).
    assert -0.005 < phases["other"] < OTHER_SHARE * rank_s, (phases, rank_s)


@pytest.mark.slow
def test_a_slow_loader_lands_in_data_wait_not_in_compute(loop, monkeypatch):
    from jobs.train import Trainer

    delay = 0.03
    loader = slow_loader(monkeypatch, delay)
    steps = Spy(monkeypatch, Trainer, "_micro_step")
    code, trainer, rank_s = loop()
    phases = trainer.state.phases
    assert code == exit_codes.NOT_REACHED and steps.calls == BATCHES
    assert phases["data_wait"] >= BATCHES * delay
    assert phases["data_wait"] == pytest.approx(sum(loader), abs=0.01)
    assert phases["compute"] == pytest.approx(steps.seconds, rel=0.02, abs=0.01)  # no loader time in it
    assert_other_is_small(phases, rank_s)


@pytest.mark.slow
def test_a_slow_checkpoint_lands_in_checkpoint(loop, monkeypatch):
    import jobs.train
    from jobs.train import Trainer

    delay = 0.3
    writes = Spy(monkeypatch, jobs.train, "save_checkpoint", delay=delay)
    checkpoints = Spy(monkeypatch, Trainer, "_checkpoint")
    steps = Spy(monkeypatch, Trainer, "_micro_step")
    code, trainer, rank_s = loop()
    phases = trainer.state.phases
    assert code == exit_codes.NOT_REACHED and writes.calls == 2  # after each epoch
    assert phases["checkpoint"] >= writes.calls * delay
    assert phases["checkpoint"] == pytest.approx(checkpoints.seconds, abs=0.01)
    assert phases["compute"] == pytest.approx(steps.seconds, rel=0.02, abs=0.01)
    assert_other_is_small(phases, rank_s)


@pytest.mark.slow
def test_every_phase_is_measured_and_other_is_reported(loop, monkeypatch):
    from jobs.tasks.image_classification import ImageClassification
    from jobs.train import Trainer

    evals = Spy(monkeypatch, ImageClassification, "evaluate")
    steps = Spy(monkeypatch, Trainer, "_micro_step")
    windows: list[float] = []
    original_report = Trainer._report

    def report(self, *args):
        original_report(self, *args)
        windows.append(args[-1].compute_s)

    monkeypatch.setattr(Trainer, "_report", report)
    code, trainer, rank_s = loop()
    phases = trainer.state.phases
    assert code == exit_codes.NOT_REACHED and evals.calls == 1
    assert phases["eval"] == pytest.approx(evals.seconds, abs=0.01)
    assert phases["compute"] == pytest.approx(steps.seconds, rel=0.02, abs=0.01)
    # Log windows end at steps 4, 8, 12 (an epoch's last), 16, 20 and 24: together they hold all the compute.
    assert len(windows) == 6 and sum(windows) == pytest.approx(phases["compute"], abs=1e-6)
    assert_other_is_small(phases, rank_s)
    assert sum(phases[name] for name in RANK_PHASES) == pytest.approx(rank_s + phases["startup"], abs=0.01)
    logged = trainer.tracking.tracker.metrics
    assert logged["phase_other_s"] == round(phases["other"], 4) and logged["phase_compute_s"] > 0


@pytest.mark.slow
def test_a_checkpoint_without_other_resumes_and_counts_on(loop, monkeypatch):
    """A checkpoint written before ``other`` existed: its compute held the rest, and it resumes."""
    from jobs.data.images import SyntheticLoader
    from jobs.rank.checkpoint import load_checkpoint, save_checkpoint
    from tests.test_step_modes import signal_at

    with monkeypatch.context() as patch:
        signal_at(patch, SyntheticLoader, epoch=1, step=2)
        code, first, _ = loop()
    assert code == exit_codes.PREEMPTED
    path = latest_checkpoint(Path(first.job.checkpoint_dir))
    saved = load_checkpoint(path)
    phases = saved["progress"]["phases"]
    phases["compute"] += phases.pop("other")
    phases["train"] = phases["data_wait"] + phases["compute"]
    save_checkpoint(path.parent, saved, saved["progress"]["global_step"])

    code, resumed, _ = loop(job=first.job)
    totals = resumed.state.phases
    assert code == exit_codes.NOT_REACHED and resumed.resumed_from == path.name
    assert totals["startup"] == phases["startup"] and totals["lost"] > 0
    assert totals["compute"] > phases["compute"] and 0 <= totals["other"] < 0.5
    assert totals["train"] == pytest.approx(totals["data_wait"] + totals["compute"])


@pytest.mark.fast
def test_old_progress_without_other_loads():
    state = LoopState.from_dict({"global_step": 9, "phases": {"startup": 2.0, "data_wait": 1.0, "compute": 5.0,
                                                              "train": 6.0}})
    clock = PhaseClock()
    clock.start_run(state.phases, saved_at=time.time() - 1.0, now=time.time())
    totals = clock.totals()
    assert totals["compute"] == 5.0 and totals["other"] == pytest.approx(0.0, abs=0.01)
    assert totals["lost"] == pytest.approx(1.0, abs=0.05) and totals["train"] == 6.0


def slow_batches(count: int, delay: float):
    for index in range(count):
        time.sleep(delay)
        yield index


@pytest.mark.fast
def test_the_clock_alone_across_a_resume():
    clock = PhaseClock()
    clock.origin = time.time() - 0.2  # the process started 0.2 s ago
    state = LoopState()
    clock.start_run(state.phases, state.saved_at, time.time())
    for _ in clock.waiting(slow_batches(3, 0.02)):
        with clock.compute:
            time.sleep(0.03)
        time.sleep(0.01)  # "other": no clock
    assert clock.window_compute_s() == pytest.approx(0.09, abs=0.03) and clock.window_compute_s() == 0
    with clock.measure("eval"):
        time.sleep(0.05)
    with clock.measure("checkpoint"):
        state.saved_at = time.time()
        state.phases = clock.totals(state.saved_at)
        time.sleep(0.02)
    first = clock.totals()
    assert first["startup"] == pytest.approx(0.2, abs=0.05)
    assert first["data_wait"] == pytest.approx(0.06, abs=0.03) and first["eval"] == pytest.approx(0.05, abs=0.02)
    assert first["compute"] == pytest.approx(0.09, abs=0.03) and first["other"] == pytest.approx(0.03, abs=0.02)

    time.sleep(0.1)  # preempted: requeue and start-up of the next attempt
    resumed = PhaseClock()
    resumed.start_run(state.phases, state.saved_at, time.time())
    with resumed.measure("eval"):
        time.sleep(0.02)
    now = time.time()
    totals = resumed.totals(now)
    assert totals["lost"] == pytest.approx(now - state.saved_at - 0.02, abs=0.03)
    assert sum(totals[name] for name in RANK_PHASES) == pytest.approx(now - clock.origin, abs=0.01)
    assert totals["startup"] == first["startup"] and totals["other"] >= state.phases["other"]


@pytest.mark.fast
def test_nested_measures_count_once_and_process_start_is_in_the_past():
    clock = PhaseClock()
    clock.start_run({}, 0.0, time.time())
    with clock.measure("checkpoint"), clock.measure("eval"):
        time.sleep(0.03)
    totals = clock.totals()
    assert totals["eval"] == 0 and totals["checkpoint"] >= 0.03
    assert time.time() - 3600 < process_start_time() <= time.time()


@pytest.mark.fast
def test_overlap_of_sorted_spans():
    assert overlap_s([(0, 5), (6, 8)], [(1, 2), (4, 7), (9, 10)]) == 1 + 1 + 1
    assert overlap_s([(0, 1)], [(1, 2)]) == 0 and overlap_s([], [(0, 1)]) == 0
    assert overlap_s([(0, 10)], [(2, 3), (4, 5)]) == 2


class FakeCuda:
    """A stand-in for ``torch.cuda``: one stream whose work takes the seconds :meth:`launch` queues."""

    def __init__(self) -> None:
        self.busy_until, self.stream_syncs, self.event_waits = 0.0, 0, 0
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at = 0.0

            def record(self) -> None:  # the stream reaches it once the work queued before it is done
                self.at = max(time.perf_counter(), cuda.busy_until)

            def query(self) -> bool:
                return time.perf_counter() >= self.at

            def synchronize(self) -> None:
                cuda.event_waits += 1
                time.sleep(max(self.at - time.perf_counter(), 0.0))

            def elapsed_time(self, end) -> float:
                return (end.at - self.at) * 1000

        self.Event = Event

    def launch(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, time.perf_counter()) + seconds

    def current_stream(self, device):
        cuda = self

        class Stream:
            def synchronize(self) -> None:
                cuda.stream_syncs += 1
                time.sleep(max(cuda.busy_until - time.perf_counter(), 0.0))

        return Stream()


@pytest.mark.fast
def test_on_a_gpu_compute_is_device_time_and_other_leaves_out_what_overlapped_host_phases():
    """The device path's accounting, with a stand-in device: 0.1 s of work per step behind 0.06 s data waits.

    Host: wait 0-.06, .06-.12, .12-.18, then the loss read waits for the device.
    Device: step 1 .06-.16, step 2 .16-.26, step 3 .26-.36. Data waits it overlaps: .06 + .04 + .02 = .12.
    """
    cuda = FakeCuda()
    clock = PhaseClock()
    clock.compute = DeviceCompute(torch.device("cuda"), cuda=cuda)
    started = time.time()
    clock.start_run({}, 0.0, started)
    for _ in clock.waiting(slow_batches(3, 0.06)):
        with clock.compute:
            cuda.launch(0.1)  # the host only queues the work
    assert clock.window_compute_s() == pytest.approx(0.1, abs=0.02)  # at 0.18 s only step 1 has completed
    time.sleep(max(cuda.busy_until - time.perf_counter(), 0.0))  # the loss read at the log boundary
    assert clock.window_compute_s() == pytest.approx(0.2, abs=0.02)  # steps 2 and 3
    totals = clock.totals(time.time())
    assert cuda.stream_syncs == 1 and cuda.event_waits == 0  # the anchor at run_start, and no other sync
    assert totals["compute"] == pytest.approx(0.3, abs=0.02) and totals["data_wait"] == pytest.approx(0.18, abs=0.02)
    assert clock.overlapped_s == pytest.approx(0.12, abs=0.02)
    wall = time.time() - started
    assert totals["other"] == pytest.approx(wall - 0.18 - (0.3 - 0.12), abs=0.02)


def record(tmp_path, **extra) -> JobRecord:
    return JobRecord(job_id="j1", name="tiny", backend="slurm", recipe="resnet50", cluster="c",
                     job_dir=str(tmp_path / "jobs" / "j1"), checkpoint_dir=str(tmp_path / "ck"),
                     tracking_uri="sqlite:///x.db", world_size=2, submitted_at=1000.0, finished_at=1100.0,
                     extra=extra)


@pytest.mark.fast
def test_launcher_breakdown_adds_queued_startup_and_shutdown_and_shows_other(tmp_path):
    info = {"attempts": ["j1"], "first_origin": 1004.0, "first_run_start": 1010.0, "phases_at": 1097.0,
            "phases": {"startup": 6.0, "lost": 20.0, "data_wait": 5.0, "compute": 49.0, "eval": 10.0,
                       "checkpoint": 2.0, "other": 1.0, "train": 54.0}}
    found = phase_breakdown(record(tmp_path, started_at=1003.0), info, preflight_s=2.0)
    assert found.phases == {"queued": 3.0, "preflight": 2.0, "startup": 5.0, "data_wait": 5.0, "compute": 49.0,
                            "eval": 10.0, "checkpoint": 2.0, "other": 1.0, "lost": 20.0, "shutdown": 3.0}
    assert found.wall_s == 100.0 and found.total_s == pytest.approx(100.0)
    metrics = breakdown_metrics(found)
    assert metrics["phase_train_s"] == 54.0 and metrics["phase_other_s"] == 1.0 and metrics["wall_time_s"] == 100.0
    table = format_breakdown(found)
    assert "queued" in table and "  other " in table and "100.0%" in table
    # Without the scheduler's start time, the first rank's start ends the queue.
    assert phase_breakdown(record(tmp_path), info).phases["queued"] == 4.0
    assert phase_breakdown(record(tmp_path), {"phases": {}}) is None


@pytest.mark.fast
def test_slurm_times_parse_and_unknown_is_none():
    assert slurm_time("2024-05-01T12:00:03") == time.mktime((2024, 5, 1, 12, 0, 3, 0, 0, -1))
    assert slurm_time("Unknown") is None and slurm_time(None) is None


@pytest.mark.fast
def test_the_allocation_end_is_endtime_refined_by_the_batch_scripts_clock_within_its_second():
    from orchestrator.spec.slurm_status import allocation_end

    assert allocation_end(1000.0, "1000.437\n") == 1000.437  # EndTime keeps whole seconds, rounded down
    assert allocation_end(1000.0, "999.98") == 1000.0  # the script's clock is a second behind: EndTime
    assert allocation_end(1000.0, "1003.2") == 1000.0  # or ahead (another clock, another requeue)
    assert allocation_end(1000.0, None) == allocation_end(1000.0, "garbled") == 1000.0
