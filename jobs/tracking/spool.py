"""The MLflow spool: every tracking record is written here before it is sent.

One spool holds one MLflow run; a job keeps its spool across attempts. Layout::

    meta.json       tracking_uri, experiment, run_name, run_id (once known), done
    records.jsonl   append-only: {"seq", "kind", ...} for start/params/tags/metrics/artifact/end
    sent.jsonl      append-only: {"seq", "ok"}; records are sent in order, so the highest
                    seq is the watermark and nothing is sent twice
    artifacts/<seq>/  a copy of an artifact that could not be sent when it was logged

The sender (:class:`jobs.tracking.tracker.Tracker`) appends and acknowledges; ``podrun sync``
replays what is left (:func:`jobs.tracking.tracker.replay_spool`); the launcher only asks
:func:`spool_pending`, without importing MLflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.contract.errors import PodrunError

log = logging.getLogger(__name__)

META_FILE = "meta.json"
RECORDS_FILE = "records.jsonl"
SENT_FILE = "sent.jsonl"
ARTIFACTS_DIR = "artifacts"


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


# What each kind of record must hold to be sent (anything else in a spool is skipped).
RECORD_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "start": {}, "params": {"params": dict}, "tags": {"tags": dict}, "end": {"status": str},
    "metrics": {"metrics": dict, "step": int, "timestamp": int}, "artifact": {"src": str},
    # the run page's records (jobs.tracking.dataset_inputs, .model_registry, .run_page), sent after run_stop
    "dataset": {"name": str, "context": str, "paths": list},
    "model": {"checkpoint": str, "inputs": str, "model_config": dict, "name": str},  # and "task" (or an old "arch")
    "run_page": {"metric": str, "unit": str, "code": int, "command": str},
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


def spool_pending(spool_dir: Path) -> bool:
    """True if ``spool_dir`` holds records that never reached MLflow (``podrun sync`` sends them)."""
    try:
        meta = json.loads((Path(spool_dir) / META_FILE).read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # damaged: `podrun sync` says what is wrong with it
    return not isinstance(meta, dict) or not meta.get("done", False)
