"""The MLflow spool: every tracking record is written here before it is sent.

One spool holds one MLflow run; a job keeps its spool across attempts. Layout::

    meta.json       tracking_uri, experiment, run_name, run_id (once known), done
    records.jsonl   append-only: {"seq", "kind", ...} for start/params/tags/metrics/artifact/end
    sent.jsonl      append-only: {"seq", "ok"}; records are sent in order, so the highest
                    seq is the watermark and nothing is sent twice
    artifacts/<seq>/  a copy of an artifact that could not be sent when it was logged

The sender (:class:`jobs.tracker.Tracker`) appends and acknowledges; ``podrun sync``
replays what is left (:func:`jobs.tracker.replay_spool`); the launcher only asks
:func:`spool_pending`, without importing MLflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.errors import PodrunError

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
        return json.loads((self.root / META_FILE).read_text()) if self.exists() else {}

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
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash mid-write
                log.warning("tracking: skipped a malformed line in %s", path)

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
        records = []
        for line in complete.decode("utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("tracking: skipped a malformed line in %s", path)
        return records, offset + len(complete)

    def artifact_copy(self, seq: int) -> Path:
        return self.root / ARTIFACTS_DIR / str(seq)


def spool_pending(spool_dir: Path) -> bool:
    """True if ``spool_dir`` holds records that never reached MLflow (``podrun sync`` sends them)."""
    try:
        return not json.loads((Path(spool_dir) / META_FILE).read_text()).get("done", False)
    except (OSError, ValueError):
        return False
