"""Local jobs never run on unseen: the launcher, the supervisor and the ranks end together.

* **Launcher -> supervisor.** An attached ``podrun launch`` holds the write end of a pipe
  whose read end the supervisor watches (:class:`Lifeline`). When the launcher goes away
  without letting go (SIGKILL, a closed terminal, ``podrun launch JOB | tee log`` and
  Ctrl-C), the supervisor reads end-of-file and stops the job as ``podrun cancel`` would:
  the ranks checkpoint and exit, and the record says why. ``--detach`` lets go first.
* **Supervisor -> ranks.** Each rank starts with ``PR_SET_PDEATHSIG=SIGTERM``
  (:func:`die_with_parent`): if the supervisor is killed, its ranks get SIGTERM, write a
  checkpoint and exit, instead of training on as orphans.
* **Status afterwards.** The supervisor writes the ranks' pids to ``ranks.json``; when it
  is gone, :func:`orphan_status` tells from them and ``outcome.json`` what really happened.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

from jobs.contract import exit_codes
from orchestrator.spec.jobstore import FAILED, RUNNING, JobRecord

RANKS_FILE = "ranks.json"
DETACH = b"d"
PR_SET_PDEATHSIG = 1


class Lifeline:
    """The supervisor's end: ``gone()`` turns true once the attached launcher has died."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def gone(self) -> bool:
        """True once, when the launcher ended without letting go; never blocks."""
        if self.fd is None or not select.select([self.fd], [], [], 0)[0]:
            return False
        data = os.read(self.fd, 64)
        os.close(self.fd)
        self.fd = None
        return DETACH not in data


def open_lifeline() -> tuple[int, int]:
    """(read end for the supervisor, write end the launcher keeps); neither is inherited by other children."""
    return os.pipe()


def let_go(write_fd: int) -> None:
    """The launcher detaches: the job runs on without it."""
    try:
        os.write(write_fd, DETACH)
    except OSError:  # the supervisor is gone already
        pass
    os.close(write_fd)


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the child when this process dies."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc (no extra dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def write_rank_pids(job_dir: Path, pids: list[int]) -> None:
    path = Path(job_dir) / RANKS_FILE
    tmp = path.with_name(f".{RANKS_FILE}.tmp")
    tmp.write_text(json.dumps({"supervisor": os.getpid(), "ranks": pids}))
    os.replace(tmp, path)


def rank_pids(job_dir: Path) -> list[int]:
    """The pids the supervisor started (ranks, or horovodrun), as it recorded them."""
    try:
        pids = json.loads((Path(job_dir) / RANKS_FILE).read_text())["ranks"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [pid for pid in pids if isinstance(pid, int)]


def live_ranks(job_dir: Path, alive: Callable[[int], bool]) -> list[int]:
    """The recorded rank pids that still run this job's ranks (a reused pid does not count)."""
    config = str(Path(job_dir)).encode()
    found = []
    for pid in rank_pids(job_dir):
        try:
            if alive(pid) and config in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def orphan_status(record: JobRecord, alive: Callable[[int], bool], exit_states: dict[int, str]) -> JobRecord:
    """The state of a local job whose supervisor is gone, from its ranks and what rank 0 recorded."""
    live = live_ranks(Path(record.job_dir), alive)
    if live:
        record.state = RUNNING
        record.detail = (f"the supervisor is gone (killed?); {len(live)} rank(s) still running: they got SIGTERM "
                         "and stop after a checkpoint")
        return record
    code = exit_codes.read_outcome(Path(record.job_dir))
    record.exit_code = code if code is not None else exit_codes.FAILED
    record.state = exit_states.get(record.exit_code, FAILED)
    ended = exit_codes.DESCRIPTIONS.get(code, "no outcome recorded") if code is not None else "no outcome recorded"
    record.detail = f"the supervisor is gone (killed?); the ranks ended: {ended}"
    record.finished_at = record.finished_at or time.time()
    record.save()
    return record
