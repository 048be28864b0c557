"""Stragglers: a rank that runs, but slowly, named at log time, without a collective per step.

**What is timed.** In synchronous DDP or Horovod every rank's step takes the same wall time:
the fast ranks wait inside the gradient all-reduce for the slow one. The phase clock's
``compute`` (:mod:`jobs.rank.phases`) does not help either: DDP runs the all-reduce inside
``loss.backward()`` (it overlaps the backward pass, and ``backward()`` returns only once the
last bucket is reduced), so a fast rank's compute holds its wait too. So this module times
each rank's own work, before it meets the others (:class:`LocalClock`), per micro-step:

* from the start of the micro-step (forward) to the moment its gradients are handed to the
  all-reduce: with DDP, when DDP hands over its last bucket (a comm hook,
  :func:`ready_hook`, that then runs DDP's own all-reduce, :func:`default_hooks.allreduce_hook`);
  with Horovod, or on a micro-step that only accumulates (``no_sync``), when ``backward()``
  returns (Horovod's all-reduce waits in ``optimizer.synchronize()``, after that);
* plus the time the rank waited for its loader (``data_wait``: a slow disk or input pipeline
  makes a straggler too).

The other choice the issue allows, each rank's wait inside the collective (shortest on the
slow rank), needs the wait's own end, which DDP keeps inside ``backward()``; and "the
shortest wait" names a rank only by what the others lose. Timing the work names the rank
by its own figure, and the same figure works for DDP, Horovod and any number of ranks. The
optimizer step is left out (after the all-reduce on every path, and short). On a GPU both
marks are CUDA events on the current stream, read at the next log boundary once they have
completed (the loss read has waited for the device there): no sync of their own.
``tests/test_stragglers.py`` runs two gloo ranks with one slowed and shows that the step's wall
time and the phase clock's compute are the same on both, and this clock is not.

**How ranks are compared.** Each rank divides its window's seconds by the items it trained
(so token-bucketed batches of different sizes compare fairly) and puts the figure in its own
slot of the sum the log boundary takes anyway (:func:`jobs.rank.dist.all_reduce_sum` of
``[items, 0, .., mine, .., 0]``): one collective per log window, as before, now of
``1 + world_size`` numbers instead of 1. Adding zeros is exact, so every rank reads the same
figures and reaches the same verdict at the same step: a ``replace`` needs no vote.
:class:`StragglerCheck` divides each figure by the median; a rank at ``threshold`` x the
median or more for ``window`` log windows in a row is named. The first window of an attempt
is not compared (compilation, allocator and autotuning warm-up).

**Where it is named.** Rank 0 prints ``[straggler] rank R on HOST: 1.6x the median``, keeps
the named ranks in ``<job_dir>/stragglers.json`` (``podrun status`` shows them, see
:func:`status_note`), and the run records the tag ``podrun.stragglers`` and, every compared
window, the metric ``straggler_ratio`` (the slowest rank over the median). With
``straggler.action: replace`` rank 0 also writes ``<job_dir>/replace.json`` (``{"hosts":
[...], "reason": "..."}``), and every rank stops after a checkpoint with
:data:`jobs.contract.exit_codes.REPLACE` (8): the Slurm batch script starts the ranks again
inside its allocation without those hosts; elsewhere exit 8 ends the job.

Nothing here imports torch at module level: the launcher reads the status file through it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.contract.job import StragglerConfig

STATUS_FILE = "stragglers.json"
REPLACE_FILE = "replace.json"


class LocalClock:
    """Seconds of each micro-step before its gradients meet the other ranks' (see the module docstring).

    :meth:`begin` at the micro-step's start, :meth:`ready` when its gradients are handed to the
    all-reduce (the first call of a micro-step counts); :meth:`window_s` at a log boundary.
    ``cuda``: the ``torch.cuda`` module, or a stand-in with its ``Event``.
    """

    def __init__(self, device: Any = None, cuda: Any = None) -> None:
        self.on_gpu = getattr(device, "type", "cpu") == "cuda"
        if self.on_gpu and cuda is None:
            import torch

            cuda = torch.cuda
        self._cuda = cuda
        self._start: Any = 0.0
        self._marked = True
        self._seconds = 0.0
        self._pending: deque[tuple[Any, Any]] = deque()  # (start, ready) events not read yet
        self._free: list[Any] = []

    def _event(self) -> Any:
        return self._free.pop() if self._free else self._cuda.Event(enable_timing=True)

    def begin(self) -> None:
        self._marked = False
        if self.on_gpu:
            self._start = self._event()
            self._start.record()
        else:
            self._start = time.perf_counter()

    def ready(self) -> None:
        if self._marked:
            return
        self._marked = True
        if self.on_gpu:
            ready = self._event()
            ready.record()
            self._pending.append((self._start, ready))
        else:
            self._seconds += time.perf_counter() - self._start

    def window_s(self) -> float:
        """The seconds measured since the last call; on a GPU, pairs not completed yet count next time."""
        while self._pending and self._pending[0][1].query():
            start, ready = self._pending.popleft()
            self._seconds += start.elapsed_time(ready) / 1000
            self._free += (start, ready)
        found, self._seconds = self._seconds, 0.0
        return found


class _NoClock:
    """What the loop calls when the check is off (one rank, or ``straggler: false``)."""

    def begin(self) -> None:
        pass

    def ready(self) -> None:
        pass

    def window_s(self) -> float:
        return 0.0


def ready_hook(state, bucket):  # no annotations: DDP compares them with its own types
    """A DDP comm hook: mark the clock when DDP hands over its last bucket, then DDP's own all-reduce.

    DDP reduces its buckets in order, so the last one is handed over once every gradient is ready.
    ``state``: ``(clock, allreduce_hook)``.
    """
    clock, allreduce = state
    if bucket.is_last():
        clock.ready()
    return allreduce(None, bucket)


def ratios_to_median(values: Sequence[float]) -> list[float]:
    """Each value over the median of all; 1.0 each where the median is 0 (nothing measured)."""
    middle = statistics.median(values)
    if middle <= 0:
        return [1.0] * len(values)
    return [value / middle for value in values]


@dataclass
class Comparison:
    """One log window's verdict: every rank's ratio to the median, and who is named."""

    ratios: list[float]
    named: list[int] = field(default_factory=list)  # named in this window
    recovered: list[int] = field(default_factory=list)  # named before, within the threshold now
    current: list[int] = field(default_factory=list)  # named now (this window's and earlier ones')

    @property
    def worst(self) -> float:
        return max(self.ratios)


class StragglerCheck:
    """Ranks at ``threshold`` x the median or more for ``window`` log windows in a row."""

    def __init__(self, threshold: float, window: int) -> None:
        self.threshold, self.window = threshold, window
        self.streaks: dict[int, int] = {}  # rank -> windows in a row at or over the threshold

    def observe(self, seconds: Sequence[float]) -> Comparison:
        """Compare one window's figures (one per rank, in rank order)."""
        ratios = ratios_to_median(seconds)
        before = self._named()
        self.streaks = {rank: self.streaks.get(rank, 0) + 1 for rank, ratio in enumerate(ratios)
                        if ratio >= self.threshold}
        now = self._named()
        return Comparison(ratios, sorted(now - before), sorted(before - now), sorted(now))

    def _named(self) -> set[int]:
        return {rank for rank, count in self.streaks.items() if count >= self.window}


class Stragglers:
    """The loop's straggler check for one rank (see the module docstring).

    Every rank calls :meth:`slots` and :meth:`compare` at each log boundary; rank 0 then
    :meth:`record`\\ s what changed.
    """

    def __init__(self, config: StragglerConfig, rank: int, world_size: int, device: Any, job_dir: Path) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.active = config.enabled and world_size > 1
        self.clock: LocalClock | _NoClock = LocalClock(device) if self.active else _NoClock()
        self.check = StragglerCheck(config.threshold, config.window)
        self.job_dir = Path(job_dir)
        self.hosts: list[str] = []  # every rank's host, in rank order (the loop gathers them at run_start)
        self.named: dict[int, dict[str, Any]] = {}  # rank -> host, ratio, step, now: every rank named so far
        self.replace_reason = ""
        self._windows = 0

    def attach(self, ddp: Any) -> None:
        """Mark the clock from DDP's comm hook (before the first backward); nothing to do without DDP."""
        if self.active and ddp is not None:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            ddp.register_comm_hook((self.clock, allreduce_hook), ready_hook)

    def slots(self, items: float, data_wait_s: float) -> list[float]:
        """This rank's share of the log boundary's sum: its seconds per item in its own slot, zeros elsewhere."""
        if not self.active:
            return []
        values = [0.0] * self.world_size
        values[self.rank] = (data_wait_s + self.clock.window_s()) / max(items, 1.0)
        return values

    def compare(self, seconds: Sequence[float], step: int) -> Comparison | None:
        """The window's verdict from the summed slots (the same on every rank); None: nothing compared."""
        if not self.active:
            return None
        self._windows += 1
        if self._windows == 1:
            return None  # warm-up: compilation, the allocator, autotuning
        found = self.check.observe(seconds)
        for rank in found.named:
            self.named[rank] = {"rank": rank, "host": self.host(rank), "ratio": round(found.ratios[rank], 2),
                                "step": step, "now": True}
        for rank in found.recovered:
            self.named[rank]["now"] = False
        if found.named and self.config.action == "replace":
            self.replace_reason = "; ".join(self.describe(rank, found.ratios[rank]) for rank in found.current)
        return found

    def host(self, rank: int) -> str:
        return self.hosts[rank] if rank < len(self.hosts) else "?"

    def describe(self, rank: int, ratio: float) -> str:
        """``rank 2 on host3: 1.6x the median``."""
        return f"rank {rank} on {self.host(rank)}: {ratio:.1f}x the median"

    def record(self, found: Comparison, say: Callable[[str], None]) -> str | None:
        """Rank 0: say what changed, keep it for ``podrun status`` and, to replace, write ``replace.json``.

        Returns the ``podrun.stragglers`` tag when it changed. Bookkeeping only: a file that cannot
        be written costs a warning, never the run.
        """
        for rank in found.named:
            say(f"[straggler] {self.describe(rank, found.ratios[rank])} ({self.check.window} log windows in a "
                f"row at {self.check.threshold:g}x or more; action {self.config.action})")
        for rank in found.recovered:
            say(f"[straggler] rank {rank} on {self.host(rank)}: back to {found.ratios[rank]:.1f}x the median")
        if not (found.named or found.recovered):
            return None
        try:
            self._write(STATUS_FILE, {"threshold": self.check.threshold, "window": self.check.window,
                                      "action": self.config.action, "named": list(self.named.values())})
            if self.replace_reason and found.named:
                hosts = sorted({self.host(rank) for rank in found.current})
                self._write(REPLACE_FILE, {"hosts": hosts, "reason": self.replace_reason})
                say(f"[straggler] stopping after a checkpoint to replace {', '.join(hosts)} (exit 8)")
        except OSError as exc:
            say(f"[straggler] warning: could not write to {self.job_dir}: {exc}")
        return describe_named(list(self.named.values()))

    def _write(self, name: str, data: dict[str, Any]) -> None:
        path = self.job_dir / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def describe_named(named: list[dict[str, Any]]) -> str:
    """The named ranks in one line: ``rank 2 on host3, 1.6x the median at step 40 (recovered)``."""
    return "; ".join(f"rank {entry.get('rank')} on {entry.get('host')}, {entry.get('ratio')}x the median at step "
                     f"{entry.get('step')}{'' if entry.get('now', True) else ' (recovered)'}" for entry in named)


def status_note(text: str | None) -> str:
    """What ``podrun status`` adds to a job's detail, from the text of ``<job_dir>/stragglers.json``; "" if none."""
    try:
        named = json.loads(text or "").get("named") or []
        line = describe_named([entry for entry in named if isinstance(entry, dict)])
    except (ValueError, AttributeError, TypeError):
        return ""
    return f"; straggler: {line}" if line else ""


def read_status_note(job_dir: Path) -> str:
    """:func:`status_note` of a job folder this machine sees."""
    try:
        return status_note((Path(job_dir) / STATUS_FILE).read_text())
    except OSError:
        return ""
