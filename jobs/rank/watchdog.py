"""The progress watchdog: a stuck rank must not hang the others forever.

Every rank runs a :class:`Watchdog` thread. The training loop tells it where it is
(:meth:`Watchdog.progress`, once per micro-batch and per evaluation batch); the thread
writes a heartbeat every few seconds to ``<job_dir>/heartbeats/rank-<r>.json`` (rank,
host, pid, position, time). When a rank's own position has not moved for
``watchdog_timeout_s`` (the job spec's key; 0 turns it off), its thread reads every
heartbeat and names the culprit:

* a rank whose heartbeat is old stopped responding altogether (``SIGSTOP``, a frozen
  process or host): its threads are stopped too;
* else a rank behind the others never reached the collective they wait in (it hangs in
  its own code, say in I/O);
* else every rank is alive and none moves: a hung collective or file system.

It prints that on the rank's log (``[watchdog] ...``), lets the trainer record the outcome
(:data:`jobs.contract.exit_codes.STALLED`), and ends the process: the main thread is blocked in a
collective and cannot be unwound. The launcher then stops the other ranks, and
``--resume`` continues from the last checkpoint.

On GPUs NCCL has its own watchdog: :func:`collective_fault_env` is what every backend puts
in the ranks' environment so that a failed or timed-out NCCL collective aborts the
communicator and ends the process instead of hanging (as torchrun does), and the process
group's timeout (:func:`process_group_timeout_s`) stays above this watchdog's, so podrun's
message, which names the rank, comes first.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEARTBEAT_DIR = "heartbeats"
DEFAULT_GROUP_TIMEOUT_S = 600


def collective_fault_env() -> dict[str, str]:
    """NCCL error handling for the ranks' environment: tear the process down on a failed or hung collective."""
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def process_group_timeout_s(watchdog_timeout_s: float) -> int:
    """The collectives' own timeout: the default, but never below the watchdog's (it must speak first)."""
    return int(max(DEFAULT_GROUP_TIMEOUT_S, watchdog_timeout_s + 60))


class Watchdog:
    """Heartbeats for one rank, and the check that its training still moves.

    Args:
        job_dir: the job's folder (shared by all ranks); heartbeats go to ``heartbeats/``.
        rank, world_size: this rank's place.
        timeout_s: no progress for this long means stalled; 0 disables the watchdog.
        on_stall: called once, from the watchdog thread, with the one-line diagnosis;
            it is expected to end the process.
    """

    def __init__(self, job_dir: Path, rank: int, world_size: int, timeout_s: float,
                 on_stall: Callable[[str], Any]) -> None:
        self.folder = Path(job_dir) / HEARTBEAT_DIR
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.on_stall = on_stall
        self.interval_s = min(max(timeout_s / 5, 0.5), 30.0)
        self.position = -1
        self.moved_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating (a daemon thread); nothing happens when the timeout is 0."""
        if self.timeout_s <= 0 or self._thread is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.moved_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="podrun-watchdog", daemon=True)
        self._thread.start()

    def progress(self, position: int | None = None) -> None:
        """The loop moved (to micro-batch ``position`` of the run; None: same place, e.g. evaluating)."""
        if position is not None:
            self.position = position
        self.moved_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, loader: Any) -> Any:
        """``loader`` whose ``epoch()`` batches count as progress (an evaluation is not a stall)."""
        return _WatchedLoader(loader, self)

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        self._beat()
        while not self._stop.wait(self.interval_s):
            self._beat()
            stalled_for = time.monotonic() - self.moved_at
            if stalled_for > self.timeout_s:
                self.on_stall(self.diagnose(stalled_for))
                return

    def _beat(self) -> None:
        beat = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "position": self.position,
                "time": time.time()}
        path = self.folder / f"rank-{self.rank}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, path)
        except OSError:  # a full or vanished file system must not end training: the check still runs
            pass

    def read_beats(self) -> dict[int, dict[str, Any]]:
        beats = {}
        for rank in range(self.world_size):
            try:
                beat = json.loads((self.folder / f"rank-{rank}.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(beat, dict):
                beats[rank] = beat
        return beats

    def diagnose(self, stalled_for: float) -> str:
        """One line: which rank stalled the job, on which host, and how it looks from here."""
        beats, now = self.read_beats(), time.time()
        head = f"rank {self.rank} made no progress for {stalled_for:.0f} s (timeout {self.timeout_s:g} s)"
        missing = [rank for rank in range(self.world_size) if rank not in beats]
        stale = {rank: now - beat.get("time", 0) for rank, beat in beats.items() if now - beat.get("time", 0)
                 > 3 * self.interval_s}
        if stale:
            parts = [f"rank {rank} on {_where(beats[rank])} stopped responding: its last heartbeat is {age:.0f} s "
                     "old (stopped, frozen, or its host is down)" for rank, age in sorted(stale.items())]
        elif missing:
            parts = [f"rank {rank} never wrote a heartbeat (it stopped or hangs before training)" for rank in missing]
        else:
            furthest = max(beat.get("position", -1) for beat in beats.values())
            behind = {rank: beat for rank, beat in beats.items() if beat.get("position", -1) < furthest}
            parts = [f"rank {rank} on {_where(beat)} is alive but never reached micro-batch {furthest} (it is at "
                     f"{beat.get('position')}): it hangs in its own code or I/O"
                     for rank, beat in sorted(behind.items())]
            if not parts:
                parts = [f"all {self.world_size} ranks are alive at micro-batch {furthest} and none moves: a hung "
                         "collective or file system"]
        return f"{head}; {'; '.join(parts)}"


def _where(beat: dict[str, Any]) -> str:
    return f"host {beat.get('host', '?')} (pid {beat.get('pid', '?')})"


class _WatchedLoader:
    def __init__(self, loader: Any, watchdog: Watchdog) -> None:
        self._loader, self._watchdog = loader, watchdog

    def epoch(self, *args: Any, **kwargs: Any) -> Any:
        for batch in self._loader.epoch(*args, **kwargs):
            self._watchdog.progress()
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
