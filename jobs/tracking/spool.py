"""The MLflow spool: every tracking record is written here before it is sent.

One spool holds one MLflow run; a job keeps its spool across attempts. Layout::

    meta.json       tracking_uri, experiment, run_name, run_id (once known), done,
                    registering (the ranks have exited; the model and run page are still to send)
    records.jsonl   append-only: {"seq", "kind", ...} for start/params/tags/metrics/artifact/end,
                    the run page's records and the launcher's phases chart
    sent.jsonl      append-only: {"seq", "ok"}; records are sent in order, so the highest
                    seq is the watermark and nothing is sent twice
    artifacts/<seq>/  a copy of an artifact that could not be sent when it was logged
    finish.lock     held by whoever sends the records left after the ranks exited (one at a time)
    launcher.pid    an attached ``podrun launch`` that still adds its phases (the finisher waits for it)

The sender (:class:`jobs.tracking.tracker.Tracker`) appends and acknowledges; ``podrun sync``
replays what is left (:func:`jobs.tracking.tracker.replay_spool`); the launcher only asks
:func:`spool_pending` and :func:`registering`, without importing MLflow.

The run's last records, ``model`` and ``run_page`` (:data:`AFTER_RELEASE`), come after its
``end`` record and are never sent by a rank's sender: they wait until every rank has exited
and are sent from outside the allocation (:func:`jobs.tracking.sender.finish_spool`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.contract.errors import PodrunError

log = logging.getLogger(__name__)

META_FILE = "meta.json"
RECORDS_FILE = "records.jsonl"
SENT_FILE = "sent.jsonl"
ARTIFACTS_DIR = "artifacts"
LOCK_FILE = "finish.lock"
LAUNCHER_FILE = "launcher.pid"
AFTER_RELEASE = ("model", "run_page")  # sent once the ranks have exited, off the allocation's GPUs


class SpoolError(PodrunError):
    """A spool is missing, or its records could not all be sent."""


class Spool:
    """The files of one spool: metadata, append-only records and acknowledgements."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def exists(self) -> bool:
        return (self.root / META_FILE).is_file()

    def read_meta(self) -> dict[str, Any]:
        """The spool's metadata, or {} when there is none.

        Raises:
            SpoolError: ``meta.json`` is not a JSON object (damaged, or not a spool's).
        """
        if not self.exists():
            return {}
        path = self.root / META_FILE
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SpoolError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:100]}); a spool's meta.json is "
                             "a JSON object with tracking_uri and experiment") from None
        if not isinstance(meta, dict):
            raise SpoolError(f"{path}: holds a JSON {type(meta).__name__}, not the object a spool's meta.json is")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(self.root / META_FILE)  # a crash never leaves half a meta file

    def append(self, record: dict[str, Any]) -> None:
        self._append_line(RECORDS_FILE, record)

    def mark_sent(self, seq: int, ok: bool) -> None:
        self._append_line(SENT_FILE, {"seq": seq, "ok": ok})

    def _append_line(self, name: str, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a", encoding="utf-8") as file:
            file.write(json.dumps(data) + "\n")

    def load(self) -> tuple[list[dict[str, Any]], int]:
        """All records in order, and the highest seq already sent (0 if none)."""
        records = list(self._read_lines(RECORDS_FILE))
        sent = max((line["seq"] for line in self._read_lines(SENT_FILE)), default=0)
        return records, sent

    def _read_lines(self, name: str) -> Iterator[dict[str, Any]]:
        path = self.root / name
        if not path.is_file():
            return
        yield from parse_lines(path.read_bytes(), path)

    def records_size(self) -> int:
        """Bytes in ``records.jsonl`` (0 before the first record)."""
        try:
            return (self.root / RECORDS_FILE).stat().st_size
        except OSError:
            return 0

    def read_new_records(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Records appended since byte ``offset`` (whole lines only), and the offset after them.

        The sender follows ``records.jsonl`` this way while the rank is still writing it, so
        a line that is only half written yet is left for the next call.
        """
        path = self.root / RECORDS_FILE
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        complete = data[: data.rfind(b"\n") + 1]
        return list(parse_lines(complete, path)), offset + len(complete)

    def artifact_copy(self, seq: int) -> Path:
        return self.root / ARTIFACTS_DIR / str(seq)

    def append_next(self, record: dict[str, Any]) -> int:
        """Append ``record`` with the next seq, for a writer other than the rank (which has exited); returns it.

        The file is locked while the last seq is read and the line written, so the launcher and
        a finisher adding records at the same time never share a seq.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / RECORDS_FILE, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            seq = max((line["seq"] for line in parse_lines(handle.read(), self.root / RECORDS_FILE)), default=0) + 1
            handle.write((json.dumps({**record, "seq": seq}) + "\n").encode())
            handle.flush()
        return seq

    @contextlib.contextmanager
    def finishing(self, wait: bool = True) -> Iterator[bool]:
        """Hold ``finish.lock`` while sending what the ranks left; yields False if another holds it (``wait=False``).

        A file system without locks (some network file systems) yields True: one finisher is
        the usual case, and a second one sends nothing twice (records go by seq).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            except OSError as exc:
                log.debug("tracking: no lock on %s (%s)", self.root, exc)
            yield True

    def busy(self) -> bool:
        """Whether a finisher holds ``finish.lock`` now."""
        try:
            with open(self.root / LOCK_FILE, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def attach_launcher(self) -> None:
        """An attached launcher will add its phases once the job ends: a finisher waits for them."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / LAUNCHER_FILE).write_text(str(os.getpid()))

    def detach_launcher(self) -> None:
        (self.root / LAUNCHER_FILE).unlink(missing_ok=True)

    def launcher_attached(self) -> bool:
        """An attached launcher that is still alive has not added its records yet."""
        try:
            pid = int((self.root / LAUNCHER_FILE).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True


# What each kind of record must hold to be sent (anything else in a spool is skipped).
RECORD_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "start": {}, "params": {"params": dict}, "tags": {"tags": dict}, "end": {"status": str},
    "metrics": {"metrics": dict, "step": int, "timestamp": int}, "artifact": {"src": str},
    # the run page's records (jobs.tracking.dataset_inputs, .model_registry, .run_page), sent after run_stop
    "dataset": {"name": str, "context": str, "paths": list},
    "model": {"checkpoint": str, "inputs": str, "model_config": dict, "name": str},  # and "task" (or an old "arch")
    "run_page": {"metric": str, "unit": str, "code": int, "command": str},
    # the launcher's phases chart ([[label, {phase: seconds}]]), drawn by whoever sends it
    "phases_chart": {"rows": list, "title": str},
}


def parse_lines(data: bytes, path: Path) -> Iterator[dict[str, Any]]:
    """The records in ``data`` (lines of JSON); a line that is not one (torn by a crash, damaged) is skipped."""
    skipped = 0
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # also UnicodeDecodeError: bytes that are not UTF-8
            record = None
        if is_record(record) or (path.name == SENT_FILE and isinstance(record, dict)
                                 and isinstance(record.get("seq"), int)):
            yield record
        elif line.strip():
            skipped += 1
    if skipped:
        log.warning("tracking: skipped %d malformed line(s) in %s", skipped, path)


def is_record(record: Any) -> bool:
    """Whether ``record`` is a spool record this version can send."""
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return False
    fields = RECORD_FIELDS.get(record.get("kind"))
    return fields is not None and all(isinstance(record.get(key), kind) for key, kind in fields.items())


def _meta_of(meta_text: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(meta_text or "")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def registering(meta_text: str | None, busy: bool | None = None) -> bool:
    """Whether a spool's ``meta.json`` (its text) says the model and run page are still to be sent.

    ``busy`` (a finisher holds the lock: the local backend's sender, which may not have marked
    it yet) counts as well, while the spool is not done.
    """
    meta = _meta_of(meta_text)
    return bool(meta) and bool(meta.get("registering") or busy) and not meta.get("done")


REGISTERING_NOTE = "; registering: "


def registering_note(meta_text: str | None, job_id: str, busy: bool | None = None) -> str:
    """What ``podrun status`` adds while the model and run page are still to be sent ("" otherwise).

    ``busy``: whether a finisher is at it now (None: cannot tell, e.g. over SSH).
    """
    if not registering(meta_text, busy):
        return ""
    if busy:
        return f"{REGISTERING_NOTE}the model and run page are going to MLflow (the ranks have exited)"
    return (f"{REGISTERING_NOTE}the model and run page wait to go to MLflow (the ranks have exited); "
            f"podrun sync {job_id} sends them")


def with_registering_note(detail: str, meta_text: str | None, job_id: str, busy: bool | None = None) -> str:
    """``detail`` with the current registering note (an older one, from a record passed back in, replaced)."""
    return detail.split(REGISTERING_NOTE)[0] + registering_note(meta_text, job_id, busy)


def spool_note(spool_dir: Path, job_id: str, detail: str) -> str:
    """:func:`with_registering_note` for a spool on this machine (whose lock says whether a finisher is at it)."""
    spool = Spool(spool_dir)
    try:
        text = (spool.root / META_FILE).read_text(errors="replace")  # damaged: sync says what is wrong
    except OSError:
        text = None
    meta = _meta_of(text)
    unsent = bool(meta) and not meta.get("done")
    if unsent and not meta.get("registering") and spool_pending(spool_dir):
        text = json.dumps({**meta, "registering": True})  # a sender stopped before the run's end: sync sends it all
    return with_registering_note(detail, text, job_id, spool.busy() if unsent else None)


def spool_pending(spool_dir: Path) -> bool:
    """True if ``spool_dir`` holds records that never reached MLflow (``podrun sync`` sends them)."""
    try:
        meta = json.loads((Path(spool_dir) / META_FILE).read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # damaged: `podrun sync` says what is wrong with it
    return not isinstance(meta, dict) or not meta.get("done", False)
