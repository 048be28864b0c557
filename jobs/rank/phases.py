"""Where a rank's wall time goes: start-up, data wait, compute, eval, checkpoints, other, lost.

Each phase has a clock of its own, touched by the training loop (:mod:`jobs.train`) where it
already changes what it does:

* ``data_wait``: the time inside ``next()`` on the training loader (:meth:`PhaseClock.waiting`);
* ``compute``: forward, backward and the optimizer step (``with clock.compute:`` around
  ``Trainer._micro_step``);
* ``eval`` and ``checkpoint``: around an evaluation and a checkpoint (:meth:`PhaseClock.measure`);
* ``startup``: the process start (or :func:`mark_origin`) to the first ``run_start``; ``lost``:
  from a checkpoint to the ``run_start`` of the attempt that resumes it (requeue, queueing,
  start-up again, work done after the checkpoint and redone).

``other`` is what no clock measured: progress lines and MLflow calls, the stop vote, the MLPerf
log, the Python between steps, a collective waiting for a slower rank. It is reported
(``phase_other_s``, the launcher's table, the sweep report), never folded into another
phase. On CPU every clock is a host clock (``perf_counter``) and no two run at once, so, per
attempt, ``other = (now - run_start) - data_wait - compute - eval - checkpoint``, and::

    startup + lost + data_wait + compute + eval + checkpoint + other == rank end - process start

On a GPU the host only queues the step's work, so ``compute`` is device time: two CUDA
events around each micro-step (:class:`DeviceCompute`), read where the loop has waited for
the device anyway (the loss read at a log boundary, :meth:`PhaseClock.window_compute_s`; a
checkpoint; the end), never with a sync per step. Every event is placed on the host's
timeline through an anchor event recorded on an idle stream at ``run_start`` (one
synchronize per attempt), so the device time that ran while the host waited for data,
evaluated or checkpointed is known, and::

    other = wall - (data_wait + eval + checkpoint) - (compute - the part of it those host phases overlap)

There the phases add up to the wall time plus that overlap (the host and the device busy at
once are each counted in their own phase). ``train`` is ``data_wait + compute``.

The totals travel in the checkpoint (``progress["phases"]``): a resumed run goes on counting
(a checkpoint written before ``other`` existed resumes with ``other`` 0 so far, its
``compute`` holding what ``other`` would have). The launcher adds what only it sees
(``queued``, ``shutdown``; see :mod:`orchestrator.studies.run_phases`) and rank 0 keeps the
numbers in ``run.json`` beside the checkpoints for it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jobs.contract import metrics as metric_names

RANK_PHASES = ("startup", "lost", "data_wait", "compute", "eval", "checkpoint", "other")
MEASURED = ("data_wait", "compute", "eval", "checkpoint")  # the clocks of one attempt
Span = tuple[float, float]  # (start, end) in perf_counter seconds


def process_start_time() -> float:
    """When this process started (wall clock), from ``/proc``; now, where there is no ``/proc``."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


_origin: float | None = None


def mark_origin(when: float | None = None) -> None:
    """Start the rank's clock here instead of at process start (a pooled Ray worker process)."""
    global _origin
    _origin = time.time() if when is None else when


def origin() -> float:
    """Where this rank's ``startup`` phase begins: :func:`mark_origin`, else the process start."""
    return _origin if _origin is not None else process_start_time()


def overlap_s(spans: list[Span], others: list[Span]) -> float:
    """Seconds that ``spans`` and ``others`` share; each list sorted and without overlaps of its own."""
    total, first = 0.0, 0
    for start, end in spans:
        while first < len(others) and others[first][1] <= start:
            first += 1  # ends before this span: before every later one too
        index = first
        while index < len(others) and others[index][0] < end:
            total += min(end, others[index][1]) - max(start, others[index][0])
            index += 1
    return total


class HostCompute:
    """The ``compute`` clock on a CPU: ``perf_counter`` around each ``with`` block."""

    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._started = 0.0

    def anchor(self) -> None:
        """Nothing to line up: host spans are on the host's timeline already."""

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._spans.append((self._started, time.perf_counter()))

    def drain(self, wait: bool) -> list[Span]:
        """The spans measured since the last call."""
        spans, self._spans = self._spans, []
        return spans


class DeviceCompute:
    """The ``compute`` clock on a GPU: CUDA events around each ``with`` block, on the current stream.

    Recording an event queues it and returns; :meth:`drain` reads only the pairs that have
    completed (``query()``), unless ``wait``, where the loop waits for the device anyway.
    """

    def __init__(self, device: Any, cuda: Any = None) -> None:
        """``cuda``: the ``torch.cuda`` module, or a stand-in with its ``Event`` and ``current_stream``."""
        if cuda is None:
            import torch

            cuda = torch.cuda
        self._cuda, self._device = cuda, device
        self._pending: deque[tuple[Any, Any]] = deque()
        self._free: list[Any] = []
        self._start: Any = None
        self._anchor: Any = None
        self._anchor_host = 0.0

    def _event(self) -> Any:
        return self._free.pop() if self._free else self._cuda.Event(enable_timing=True)

    def anchor(self) -> None:
        """At ``run_start``: an event recorded on an idle stream, so its device time is the host's now."""
        self._cuda.current_stream(self._device).synchronize()  # once per attempt, never per step
        self._anchor = self._event()
        self._anchor.record()
        self._anchor_host = time.perf_counter()

    def __enter__(self) -> None:
        self._start = self._event()
        self._start.record()

    def __exit__(self, *_: object) -> None:
        end = self._event()
        end.record()
        self._pending.append((self._start, end))

    def drain(self, wait: bool) -> list[Span]:
        """The completed micro-steps' spans, on the host's timeline, oldest first."""
        spans: list[Span] = []
        while self._pending and self._anchor is not None:
            start, end = self._pending[0]
            if not (self._waited(end) if wait else end.query()):
                break
            self._pending.popleft()
            spans.append((self._host_time(start), self._host_time(end)))
            self._free += (start, end)
        return spans

    @staticmethod
    def _waited(event: Any) -> bool:
        try:
            event.synchronize()  # an event wait: no stream sync, nothing the sync debug mode flags
        except RuntimeError:
            return False  # a broken CUDA context (why the run is ending) must not hide the first error
        return True

    def _host_time(self, event: Any) -> float:
        return self._anchor_host + self._anchor.elapsed_time(event) / 1000


class PhaseClock:
    """Seconds per phase for one run, across attempts (see the module docstring).

    ``device``: the rank's ``torch.device``; on a CUDA device ``compute`` is timed with events.
    """

    def __init__(self, device: Any = None) -> None:
        self.origin = origin()
        self.saved: dict[str, float] = {}
        self.attempt = dict.fromkeys(MEASURED, 0.0)
        self.overlapped_s = 0.0  # device compute that ran while a host phase was measured (0 on CPU)
        self.run_started = self.origin
        on_gpu = getattr(device, "type", "cpu") == "cuda"
        self.compute: HostCompute | DeviceCompute = DeviceCompute(device) if on_gpu else HostCompute()
        self._inside: tuple[str, float] | None = None
        self._host_spans: list[Span] = []  # data wait, eval and checkpoint spans not yet compared with compute
        self._window_compute = 0.0
        self._window_data_wait = 0.0

    def start_run(self, phases: dict[str, float], saved_at: float, now: float) -> None:
        """At ``run_start``: a first attempt's start-up, or the time lost since the checkpoint it resumes.

        ``phases`` and ``saved_at`` come from the checkpoint it resumes (empty and 0 on a first attempt).
        """
        self.saved = {name: float(value) for name, value in phases.items()}
        if saved_at:
            self._add_saved("lost", max(now - float(saved_at), 0.0))
        else:
            self._add_saved("startup", max(now - self.origin, 0.0))
        self.run_started = now
        self.compute.anchor()

    def _add_saved(self, name: str, seconds: float) -> None:
        self.saved[name] = self.saved.get(name, 0.0) + seconds

    def _count(self, name: str, started: float) -> None:
        ended = time.perf_counter()
        self.attempt[name] += ended - started
        self._host_spans.append((started, ended))
        if name == "data_wait":
            self._window_data_wait += ended - started

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Count the block as ``name`` (``eval`` or ``checkpoint``); nested blocks count once."""
        if self._inside is not None:
            yield
            return
        self._inside = (name, time.perf_counter())
        try:
            yield
        finally:
            self._count(name, self._inside[1])
            self._inside = None

    def waiting(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield the loader's batches, counting the time spent inside ``next()`` as ``data_wait``."""
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self._count("data_wait", started)
                return
            self._count("data_wait", started)
            yield batch

    def window_compute_s(self) -> float:
        """This rank's ``compute`` seconds since the previous call: one log window's.

        The loop calls it at every log boundary, after the loss read, where a GPU has caught up
        with the host. On a GPU, micro-steps whose events have not completed yet count in the
        next window. Never synchronizes a device. Not a straggler's measure: with DDP the
        gradient all-reduce runs inside ``backward()``, so a fast rank's compute holds its wait
        for the slow one (:mod:`jobs.rank.stragglers` times the work before that all-reduce).
        """
        self._drain(wait=False)
        found, self._window_compute = self._window_compute, 0.0
        return found

    def window_data_wait_s(self) -> float:
        """This rank's ``data_wait`` seconds since the previous call (a straggler's window, with its compute)."""
        found, self._window_data_wait = self._window_data_wait, 0.0
        return found

    def _drain(self, wait: bool) -> None:
        spans = self.compute.drain(wait)
        if not spans:
            return
        seconds = sum(end - start for start, end in spans)
        self.attempt["compute"] += seconds
        self._window_compute += seconds
        self.overlapped_s += overlap_s(spans, self._host_spans)
        # Device spans come in stream order: a host span that ended before the last one cannot meet the next.
        self._host_spans = [span for span in self._host_spans if span[1] > spans[-1][1]]

    def totals(self, now: float | None = None) -> dict[str, float]:
        """Seconds per phase so far, a block still running counted up to ``now``.

        On a GPU it first waits for the micro-steps still queued (an event wait): call it where
        the loop waits for the device anyway (a checkpoint, the end of the run).
        """
        self._drain(wait=True)
        now = time.time() if now is None else now
        current = dict(self.attempt)
        if self._inside is not None:
            current[self._inside[0]] += time.perf_counter() - self._inside[1]
        spent = max(now - self.run_started, 0.0)
        found = {name: self.saved.get(name, 0.0) + current.get(name, 0.0) for name in RANK_PHASES if name != "other"}
        # Not clamped at 0: a negative share would mean two clocks counted the same seconds.
        found["other"] = self.saved.get("other", 0.0) + spent - sum(current.values()) + self.overlapped_s
        found["train"] = found["data_wait"] + found["compute"]
        return found


def phase_metrics(phases: dict[str, float]) -> dict[str, float]:
    """The MLflow metrics ``phase_<name>_s`` of a phase table."""
    return {metric_names.phase(name): round(float(seconds), 4) for name, seconds in phases.items()}


def remember_start(directory: Path, clock: PhaseClock) -> None:
    """Rank 0, at ``run_start``: keep the run's first start in ``run.json`` (the launcher's anchor)."""
    from jobs.contract.checkpoint_index import read_run_info, update_run_info

    if "first_run_start" not in read_run_info(directory):
        update_run_info(directory, first_run_start=clock.run_started, first_origin=clock.origin)


def remember_end(directory: Path, phases: dict[str, float], now: float) -> None:
    """Rank 0, at the end of an attempt: the phase totals and when they were taken, in ``run.json``.

    Bookkeeping only: a full disk (the reason a checkpoint just failed, say) costs the phase
    record a warning, never the job's own exit code.
    """
    from jobs.contract.checkpoint_index import update_run_info

    try:
        update_run_info(directory, phases=phases, phases_at=now)
    except OSError as exc:
        print(f"[phases] warning: could not record the phase totals in {directory}: {exc}", flush=True)
