"""The progress watchdog: a stuck rank must not hang the others forever, and it is named with its line.

Every rank runs a :class:`Watchdog` thread. The training loop tells it where it is
(:meth:`Watchdog.progress`, once per micro-batch and per evaluation batch); the thread
writes a heartbeat every few seconds to ``<job_dir>/heartbeats/rank-<r>.json``: rank, host,
pid, position, time, and where the loop's thread is (its innermost line, the innermost line
of podrun's or the recipe's own code, and its state: in a collective or not; see
:func:`jobs.rank.hang_names.where_is`). When a rank's own position has not moved for ``watchdog_timeout_s`` (the
job spec's key; 0 turns it off), its thread reads every heartbeat and names, in one line,
each rank that does not progress, culprits first:

* a rank whose heartbeat is old stopped responding altogether (``SIGSTOP``, a frozen
  process or host, or a thread holding the GIL): its last known line is the last beat's;
* a live rank that is not in a collective, or behind the others, never reached the
  collective they wait in: it hangs in its own code or I/O;
* the live ranks in a collective wait for those (if there is no culprit, the collective
  itself or the file system hangs).

Then it asks the live ranks for their stacks: it writes ``hang/<event>/request.json`` in the
job folder, which every rank's watchdog thread polls for (every :data:`POLL_S`). Each answers
with ``stacks-rank-<r>.txt`` (:func:`faulthandler.dump_traceback` of all its threads) and
its Flight Recorder buffers (:mod:`jobs.rank.flight_recorder`). The request never travels by
signal: ranks on other hosts have pids of their own. The firing rank waits at most
``$PODRUN_HANG_WAIT_S`` (default 5 s) for them, names the collective and the ranks missing
from it, writes ``summary.json``, prints where the files are and lets the trainer record the
outcome (:data:`jobs.contract.exit_codes.STALLED`, with that note) and end the process: the
main thread is blocked in a collective and cannot be unwound. Rank 0, if it answers another
rank's request, ends the same way after that rank's summary, so that its MLflow run records
the hang. The launcher then stops the other ranks, and ``--resume`` continues from the last
checkpoint.

On GPUs NCCL has its own watchdog: :func:`collective_fault_env` is what every backend puts
in the ranks' environment so that a failed or timed-out NCCL collective aborts the
communicator and ends the process instead of hanging (as torchrun does), with the Flight
Recorder on, and the process group's timeout (:func:`process_group_timeout_s`) stays above
this watchdog's, so podrun's message, which names the rank, comes first.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.rank.flight_recorder import (
    dump_file_env,
    dump_trace,
    flight_recorder_env,
    missing_from_collective,
    read_dumps,
)
from jobs.rank.hang_names import (
    culprit_part,
    named_parts,
    ranks_word,
    stopped_part,
    waiter_part,
    where_is,
)

HEARTBEAT_DIR = "heartbeats"
HANG_DIR = "hang"
DEFAULT_GROUP_TIMEOUT_S = 600
POLL_S = 1.0  # how often every rank looks for a request to dump its stacks (one stat of hang/ per look)
HANG_WAIT_ENV = "PODRUN_HANG_WAIT_S"
DEFAULT_HANG_WAIT_S = 5.0
FOLLOW_MARGIN_S = 10.0  # rank 0 waits this much longer than the firing rank for that rank's summary
NAMED_ONE_BY_ONE = 8  # culprits named one by one; the others share a part per line they are at
WAITERS_ONE_BY_ONE = 4  # ranks that wait in a collective: one by one up to this many, else a part per line


def collective_fault_env() -> dict[str, str]:
    """NCCL error handling for the ranks' environment: tear the process down on a failed or hung collective.

    It also turns PyTorch's Flight Recorder on, with a dump when NCCL times out
    (:func:`jobs.rank.flight_recorder.flight_recorder_env`).
    """
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", **flight_recorder_env()}


def process_group_timeout_s(watchdog_timeout_s: float) -> int:
    """The collectives' own timeout: the default, but never below the watchdog's (it must speak first)."""
    return int(max(DEFAULT_GROUP_TIMEOUT_S, watchdog_timeout_s + 60))


def hang_wait_s() -> float:
    """How long the firing rank waits for the others' stacks (``$PODRUN_HANG_WAIT_S``, default 5 s)."""
    try:
        return max(float(os.environ.get(HANG_WAIT_ENV, DEFAULT_HANG_WAIT_S)), 0.0)
    except ValueError:
        return DEFAULT_HANG_WAIT_S


# ------------------------------------------------------------------ the watchdog


class Watchdog:
    """Heartbeats for one rank, the check that its training still moves, and its answer to a hang.

    Args:
        job_dir: the job's folder (shared by all ranks); heartbeats go to ``heartbeats/``,
            stacks and traces to ``hang/``.
        rank, world_size: this rank's place.
        timeout_s: no progress for this long means stalled; 0 disables the watchdog.
        on_stall: called once, from the watchdog thread, with the note to record (the
            diagnosis, what the Flight Recorder says, where the files are) and the hang's
            folder (None if it could not be written); it is expected to end the process.
        records_hangs: this rank ends too when another rank's watchdog fires, after that
            rank collected the stacks, so that its tracker can record them (rank 0).
    """

    def __init__(self, job_dir: Path, rank: int, world_size: int, timeout_s: float,
                 on_stall: Callable[[str, Path | None], Any], records_hangs: bool = False) -> None:
        self.folder = Path(job_dir) / HEARTBEAT_DIR
        self.hang_root = Path(job_dir) / HANG_DIR
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.on_stall, self.records_hangs = on_stall, records_hangs
        self.interval_s = min(max(timeout_s / 5, 0.5), 30.0)
        self.position = -1
        self.moved_at = time.monotonic()
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._ending = threading.Lock()  # held from the verdict to the end of the process (see stop)
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self.started_at = time.time()
        self._seen: set[str] = set()  # hang events already answered, or older than this process

    def start(self) -> None:
        """Start beating (a daemon thread) for the calling thread's loop; nothing happens when the timeout is 0."""
        if self.timeout_s <= 0 or self._thread is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if _uses_nccl():  # NCCL reads where to dump when it first dumps, so setting it now is in time
            self.hang_root.mkdir(parents=True, exist_ok=True)
            for key, value in dump_file_env(self.hang_root).items():
                os.environ.setdefault(key, value)
        try:
            self._seen = {path.name for path in self.hang_root.iterdir()}  # an earlier attempt's: not answered
        except OSError:
            self._seen = set()
        self.started_at = time.time()
        self._loop_ident = threading.get_ident()
        self.moved_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="podrun-watchdog", daemon=True)
        self._thread.start()

    def progress(self, position: int | None = None) -> None:
        """The loop moved (to micro-batch ``position`` of the run; None: same place, e.g. evaluating)."""
        if position is not None:
            self.position = position
        self.moved_at = time.monotonic()

    def stop(self) -> None:
        """Stop beating. Once the thread has found a hang this waits for it to end the process:
        the loop's thread, freed when another rank goes away, must not touch the tracker meanwhile."""
        self._stop.set()
        if self._thread is not None and threading.get_ident() != self._thread.ident:
            with self._ending:
                pass

    def watch(self, loader: Any) -> Any:
        """``loader`` whose ``epoch()`` batches count as progress (an evaluation is not a stall)."""
        return _WatchedLoader(loader, self)

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        self._beat()
        beaten = time.monotonic()
        while not self._stop.wait(min(self.interval_s, POLL_S)):
            if time.monotonic() - beaten >= self.interval_s:
                self._beat()
                beaten = time.monotonic()
            self._answer_requests(follow=self.records_hangs)
            stalled_for = time.monotonic() - self.moved_at
            if stalled_for > self.timeout_s:
                self._fire(stalled_for)
                return

    def _beat(self) -> None:
        beat = {"rank": self.rank, "host": self.host, "pid": os.getpid(), "position": self.position,
                "time": time.time(), **self.where()}
        _write_json(self.folder / f"rank-{self.rank}.json", beat)

    def where(self) -> dict[str, str]:
        """Where the loop's thread is now (:func:`where_is`)."""
        frame = sys._current_frames().get(self._loop_ident or threading.main_thread().ident or 0)
        return where_is(frame, self.world_size)

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

    def stale_after_s(self) -> float:
        """A heartbeat older than this: its rank stopped responding."""
        return 3 * self.interval_s

    # ----------------------------------------------------------------- the verdict

    def diagnose(self, stalled_for: float, beats: dict[int, dict[str, Any]] | None = None) -> str:
        """One line: which ranks do not progress, on which host, in which state, at which line."""
        beats = self.read_beats() if beats is None else beats
        now = time.time()
        head = f"rank {self.rank} made no progress for {stalled_for:.0f} s (timeout {self.timeout_s:g} s)"
        stale = {rank: now - beat.get("time", 0) for rank, beat in beats.items()
                 if now - beat.get("time", 0) > self.stale_after_s()}
        missing = [rank for rank in range(self.world_size) if rank not in beats]
        alive = {rank: beat for rank, beat in beats.items() if rank not in stale}
        furthest = max((beat.get("position", -1) for beat in alive.values()), default=-1)
        culprits = {rank: beat for rank, beat in alive.items()
                    if beat.get("position", -1) < furthest or beat.get("state") != "collective"}
        waiting = {rank: beat for rank, beat in alive.items() if rank not in culprits}
        parts = [stopped_part(rank, beats[rank], age) for rank, age in sorted(stale.items())]
        if missing:
            parts.append(f"{ranks_word(missing)} never wrote a heartbeat (stopped, or hangs before training)")
        parts += named_parts(culprits, lambda rank, beat: culprit_part(rank, beat, furthest), NAMED_ONE_BY_ONE)
        if not parts:
            parts.append(f"all {self.world_size} ranks are alive in a collective at micro-batch {furthest} and none "
                         "moves: a hung collective, network or file system")
        parts += named_parts(waiting, waiter_part, NAMED_ONE_BY_ONE if len(waiting) <= WAITERS_ONE_BY_ONE else 0)
        return f"{head}; {'; '.join(parts)}"

    def _fire(self, stalled_for: float) -> None:
        """Name the ranks, collect the stacks and traces, and hand the verdict on (which ends the process)."""
        with self._ending:
            if self._stop.is_set():
                return  # the loop ended meanwhile (stop): nothing hangs
            self._beat()
            beats = self.read_beats()
            diagnosis = self.diagnose(stalled_for, beats)
            say(f"[watchdog] {diagnosis}")
            stale = self.stale_after_s()
            alive = [rank for rank, beat in beats.items() if time.time() - beat.get("time", 0) <= stale]
            note, folder = diagnosis, None
            try:
                folder = self._request(diagnosis, alive)
                note = self._collect(folder, diagnosis, alive)
            except OSError as exc:  # a full or vanished file system: the verdict still stands
                say(f"[watchdog] no stacks collected: {exc}")
            self.on_stall(note, folder)

    def _request(self, diagnosis: str, alive: list[int]) -> Path:
        """Write the request every rank polls for, and answer it first."""
        event = f"{time.strftime('%Y%m%dT%H%M%S')}-rank-{self.rank}"
        folder = self.hang_root / event
        folder.mkdir(parents=True, exist_ok=True)
        self._seen.add(event)
        _write_json(folder / "request.json", {"rank": self.rank, "host": self.host, "time": time.time(),
                                              "diagnosis": diagnosis, "alive": alive})
        self._dump_into(folder, self.rank)
        return folder

    def _collect(self, folder: Path, diagnosis: str, alive: list[int]) -> str:
        """Wait for the live ranks' stacks, read the Flight Recorder dumps; write and return the note."""
        others = [rank for rank in alive if rank != self.rank]
        answered = [self.rank, *self._wait_for_stacks(folder, others)]
        silent = [rank for rank in range(self.world_size) if rank not in answered]
        dumps = read_dumps([folder, self.hang_root], since=self.started_at)  # NCCL's own, if it timed out first
        findings = missing_from_collective(dumps, self.world_size)
        where = f"stacks of {ranks_word(sorted(answered))} in {folder}"
        if silent:
            where += f" (none from {ranks_word(silent)}: stopped or did not answer within {hang_wait_s():g} s)"
        for finding in findings:
            say(f"[watchdog] flight recorder: {finding}")
        say(f"[watchdog] {where}")
        note = "; ".join([diagnosis, *(f"flight recorder: {f}" for f in findings), where])
        _write_json(folder / "summary.json", {"note": note, "answered": sorted(answered), "silent": silent,
                                              "flight_recorder": findings})
        return note

    def _wait_for_stacks(self, folder: Path, ranks: list[int]) -> list[int]:
        deadline = time.monotonic() + hang_wait_s()
        while True:
            self._answer_requests(follow=False)  # another rank may have fired too: it waits for this one
            done = [rank for rank in ranks if (folder / f"stacks-rank-{rank}.txt").exists()]
            if len(done) == len(ranks) or time.monotonic() >= deadline:
                return done
            time.sleep(0.2)

    # ----------------------------------------------------------------- answering another rank

    def _answer_requests(self, follow: bool) -> None:
        try:
            events = sorted(path.name for path in self.hang_root.iterdir() if path.name not in self._seen)
        except OSError:
            return
        for event in events:
            folder = self.hang_root / event
            request = _read_json(folder / "request.json")
            if request is None:
                if not folder.is_dir():  # NCCL's own dump, say: never a request
                    self._seen.add(event)
                continue  # not written yet: looked at again next time
            self._seen.add(event)
            if not follow:
                self._answer(folder, request)
                continue
            with self._ending:  # before the answer: the firing rank may end (and free the loop) right after it
                if not self._stop.is_set() and self._answer(folder, request):
                    self._follow(folder, request)

    def _answer(self, folder: Path, request: dict[str, Any]) -> bool:
        try:
            self._dump_into(folder, int(request.get("rank", -1)))
        except OSError:
            return False
        return True

    def _follow(self, folder: Path, request: dict[str, Any]) -> None:
        """Rank 0: end with the job once the firing rank has its summary, so that the tracker records the hang."""
        deadline = time.monotonic() + hang_wait_s() + FOLLOW_MARGIN_S
        while (summary := _read_json(folder / "summary.json")) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        note = (summary or {}).get("note") or str(request.get("diagnosis", ""))
        say(f"[watchdog] rank {request.get('rank')}'s watchdog stopped the job: {note}")
        self.on_stall(note, folder)

    def _dump_into(self, folder: Path, requested_by: int) -> None:
        """This rank's Flight Recorder buffers, then every thread's stack (whose file says: answered)."""
        dump_trace(folder, self.rank)
        path = folder / f"stacks-rank-{self.rank}.txt"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as out:
            out.write(f"# rank {self.rank} on host {self.host} (pid {os.getpid()}), asked by rank {requested_by} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n# the training loop runs in thread "
                      f"0x{self._loop_ident or 0:016x}; the watchdog writes this from 0x{threading.get_ident():016x}"
                      f"\n# the loop: {json.dumps(self.where())}\n\n")
            out.flush()
            faulthandler.dump_traceback(file=out, all_threads=True)
        os.replace(tmp, path)


def _uses_nccl() -> bool:
    dist = sys.modules.get("torch.distributed")
    return bool(dist and dist.is_available() and dist.is_initialized() and "nccl" in str(dist.get_backend()))


def say(message: str) -> None:
    print(message, flush=True)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically (readers poll for it); a full or vanished file system must not end training."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:
        pass


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


class _WatchedLoader:
    def __init__(self, loader: Any, watchdog: Watchdog) -> None:
        self._loader, self._watchdog = loader, watchdog

    def epoch(self, *args: Any, **kwargs: Any) -> Any:
        for batch in self._loader.epoch(*args, **kwargs):
            self._watchdog.progress()
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
