"""Stopping every rank at the same optimizer step after a signal, without a sync per step.

SIGUSR2 or SIGTERM (Slurm's ``--signal``, ``scancel``, the local supervisor) sets a
:class:`StopFlag` on the ranks it reaches. The ranks then agree through a
:class:`StopVote`: every ``train.stop_check_every`` optimizer steps each rank adds its flag
to one small all-reduce, and all of them read the same sum at the same step.

* On CPU (gloo) a vote is read when it is taken: a stop lands at most ``every`` steps after
  the signal.
* On a GPU (NCCL) a vote goes to the device from pinned host memory (``non_blocking``, no
  stream sync) and is read at the next vote, from pinned host memory behind a CUDA event
  that has long passed, so the host never waits for the device's queue and keeps queuing
  work: a stop lands at most ``2 * every`` steps after the signal. A test runs a log window
  with a vote every step under ``torch.cuda.set_sync_debug_mode("error")`` (marked ``gpu``).
* With one rank the flag is read directly after every step (no collective), unless a test
  sets :data:`jobs.rank.dist.ONE_RANK_COLLECTIVES` (a one-rank group takes the real path).
* Between epochs (after evaluation and checkpoints, where the loop waits anyway)
  :meth:`StopVote.settle` takes a vote that is read at once.

So the stop costs one tiny collective per ``every`` steps and no host-device sync at the
steps in between. ``every`` x step time must stay well inside the Slurm signal lead time
(``slurm.signal_lead_s``, 120 s by default), less the checkpoint's write.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from jobs.rank.dist import PendingSum, start_all_reduce_sum, sums_need_a_collective


class StopFlag:
    """Set by a signal handler; the loop reads it at step boundaries (handlers do nothing else).

    ``replace_reason`` is the other way to stop: every rank sets it at the same log boundary from
    the same numbers (a straggler to replace, :mod:`jobs.rank.stragglers`), so the loop stops there
    without a vote and the ranks exit with :data:`jobs.contract.exit_codes.REPLACE`.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.replace_reason = ""

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Ray Train runs the loop in a thread; Ray owns the signals there
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


class StopVote:
    """The ranks' agreement to stop; see the module docstring for when a stop lands."""

    def __init__(self, every: int, device: torch.device, world_size: int) -> None:
        self.every, self.device, self.world_size = every, device, world_size
        self.collective = sums_need_a_collective(world_size)  # with one rank, no vote: the flag is the answer
        self.deferred = device.type == "cuda"  # read a GPU vote one vote later
        self._pending: PendingSum | None = None

    def after_step(self, step: int, requested: bool) -> bool:
        """True on every rank at the same ``step`` (global optimizer step) once a rank requested a stop."""
        if not self.collective:
            return requested
        if step % self.every:
            return False
        if self._read_pending():
            return True
        self._pending = start_all_reduce_sum([1.0 if requested else 0.0], self.device)
        return False if self.deferred else self._read_pending()

    def settle(self, requested: bool) -> bool:
        """A vote read at once (the vote in flight first): for the loop's natural sync points."""
        if not self.collective:
            return requested
        if self._read_pending():
            return True
        return start_all_reduce_sum([1.0 if requested else 0.0], self.device).result()[0] > 0

    def _read_pending(self) -> bool:
        pending, self._pending = self._pending, None
        return pending is not None and pending.result()[0] > 0
