"""Where a rank's wall time goes: start-up, waiting for data, compute, eval, checkpoints, lost.

The training loop (:mod:`jobs.train`) holds one :class:`PhaseClock` and touches it at the
places where it already changes what it does: ``run_start``, around an eval, around a
checkpoint, and around ``next()`` on the training loader. Nothing here synchronizes a
device: times are host clocks read at those boundaries (two ``perf_counter`` calls per
batch for the data wait), so on a GPU ``compute`` is what the host waited for the device
at the loop's own sync points (the loss read at log boundaries, the optimizer step).

The totals travel in the checkpoint (``progress["phases"]``): a resumed run goes on
counting, and the wall time between a checkpoint and the next attempt's ``run_start``
(requeue, queueing again, start-up again, work done after the checkpoint and redone) is
``lost``. By construction::

    startup + lost + data_wait + compute + eval + checkpoint == rank end - first process start

``train`` is ``data_wait + compute``: the rest of the run once eval and checkpoints are
taken out (the optimizer steps, the progress lines, the MLPerf log). The launcher adds
what only it sees (``queued``, ``shutdown``; see :mod:`orchestrator.studies.run_phases`) and rank
0 keeps the numbers in ``run.json`` beside the checkpoints for it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jobs.contract import metrics as metric_names

RANK_PHASES = ("startup", "lost", "data_wait", "compute", "eval", "checkpoint")


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


class PhaseClock:
    """Cumulative seconds per phase for one run, across attempts (see the module docstring)."""

    def __init__(self) -> None:
        self.origin = origin()
        self.saved: dict[str, float] = {}
        self.attempt = dict.fromkeys(("data_wait", "eval", "checkpoint"), 0.0)
        self.run_started = self.origin
        self._inside: tuple[str, float] | None = None

    def start_run(self, phases: dict[str, float], saved_at: float, now: float) -> None:
        """At ``run_start``: a first attempt's start-up, or the time lost since the checkpoint it resumes.

        ``phases`` and ``saved_at`` come from the checkpoint it resumes (empty and 0 on a first attempt).
        """
        self.saved = {name: float(value) for name, value in phases.items()}
        self.saved.setdefault("train", self.saved.get("data_wait", 0.0) + self.saved.get("compute", 0.0))
        if saved_at:
            self._add_saved("lost", max(now - float(saved_at), 0.0))
        else:
            self._add_saved("startup", max(now - self.origin, 0.0))
        self.run_started = now

    def _add_saved(self, name: str, seconds: float) -> None:
        self.saved[name] = self.saved.get(name, 0.0) + seconds

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
            self.attempt[name] += time.perf_counter() - self._inside[1]
            self._inside = None

    def waiting(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield the loader's batches, counting the time spent inside ``next()`` as ``data_wait``."""
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self.attempt["data_wait"] += time.perf_counter() - started
                return
            self.attempt["data_wait"] += time.perf_counter() - started
            yield batch

    def totals(self, now: float | None = None) -> dict[str, float]:
        """Seconds per phase so far, a block still running counted up to ``now``."""
        now = time.time() if now is None else now
        current = dict(self.attempt)
        if self._inside is not None:
            current[self._inside[0]] += time.perf_counter() - self._inside[1]
        spent = max(now - self.run_started, 0.0)
        train = self.saved.get("train", 0.0) + spent - current["eval"] - current["checkpoint"]
        data_wait = self.saved.get("data_wait", 0.0) + current["data_wait"]
        found = {name: self.saved.get(name, 0.0) for name in ("startup", "lost")}
        found |= {name: self.saved.get(name, 0.0) + current[name] for name in ("eval", "checkpoint")}
        found |= {"train": train, "data_wait": data_wait, "compute": max(train - data_wait, 0.0)}
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
