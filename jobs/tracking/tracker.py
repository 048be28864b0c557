"""MLflow tracking for rank 0 that never crashes or stalls a training run.

Every call is cleaned (:mod:`jobs.contract.secret_filter`), appended to the spool
(:mod:`jobs.tracking.spool`) and then sent by a :class:`jobs.tracking.sender.Sender`; while the tracking
server is unreachable the records stay in the spool and sending is retried at most every
``retry_interval_s`` seconds. ``podrun sync`` sends what is left later (:func:`replay_spool`).

With ``background=True`` (what a rank uses) the sender is a child process,
``python -m jobs.tracking.sender``: the loop only appends lines to a file, so its first step never
waits for MLflow's import or the run's creation, and MLflow's work runs on another core
rather than competing for this process's GIL. :meth:`Tracker.finish` closes the pipe that
wakes the sender and waits until the sender has sent the records up to the run's end (a
byte on a second pipe, or the sender's exit); the model and the run page it queues after the
end wait for the ranks to exit (:mod:`jobs.tracking.sender`). A sender started with
``--finish-here`` (the local backend) outlives the rank and sends everything itself, so the
rank does not wait at all. Retries are not a blocking loop (no ``tenacity``): a failed send
marks the sender offline until a deadline, and training goes on.

Usage (rank 0 only)::

    tracker = Tracker(job.tracking_uri, "resnet50", job_dir / "mlflow-spool", run_id=saved_id)
    tracker.log_params({"recipe": recipe.model_dump()})
    tracker.log_metrics({"train/loss": 2.3}, step=100)
    ok = tracker.finish("FINISHED")   # False: records are kept for `podrun sync`
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from jobs.contract.secret_filter import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    clean_metrics,
    clean_strings,
    export_credentials,
    known_secret_values,
    mask_text,
)
from jobs.tracking.mlflow_errors import describe
from jobs.tracking.sender import SENDER_NICE, Sender, replay_spool
from jobs.tracking.spool import AFTER_RELEASE, Spool

__all__ = ["Tracker", "replay_spool"]
log = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
T = TypeVar("T")
RUN_PAGE_KINDS = ("dataset", "model", "run_page")  # sent by jobs.tracking.dataset_inputs, .model_registry, .run_page
SENDER_DRAIN_TIMEOUT_S = 300  # finish() waits this long for the sender; the spool keeps the rest
# On a cluster the rank holds its device while it waits: past this, what is unsent goes from outside the allocation.
RELEASE_WAIT_S = 1.0
MAX_MASKED_BYTES = 16 << 20  # text artifacts up to this size are masked; larger ones (timelines) go as they are


def default_retry_interval() -> float:
    """Seconds between attempts while MLflow is away: ``$PODRUN_MLFLOW_RETRY_S``, else 30."""
    try:
        return max(float(os.environ.get("PODRUN_MLFLOW_RETRY_S", 30.0)), 0.1)
    except ValueError:
        return 30.0


def never_raise(default: T) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a Tracker method: an exception becomes a one-line warning and ``default``.

    The same failure of the same method is warned about once, not at every step.
    """

    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def safe(self: Tracker, *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop training
                seen = self.__dict__.setdefault("_warned", set())
                level = logging.DEBUG if (method.__name__, type(exc)) in seen else logging.WARNING
                seen.add((method.__name__, type(exc)))
                log.log(level, "tracking: %s failed (%s)", method.__name__, describe(exc))
                return default

        return safe

    return wrap


class Tracker:
    """MLflow run tracking for rank 0; no method raises and an outage costs seconds.

    Args:
        tracking_uri: ``http(s)://...`` for a server, or ``sqlite:///<file>``.
        experiment: created if missing (for sqlite with artifacts next to the db file).
        spool_dir: where records wait for the server; reuse it when the job resumes.
        run_id: continue this run (set RUNNING again). Without it the spool's own run id
            is used, or a new run is created.
        run_name: name for a new run.
        retry_interval_s: after a failure, the least time before the next attempt
            (default ``$PODRUN_MLFLOW_RETRY_S``, else 30).
        request_timeout_s: HTTP timeout of one attempt.
        background: send from a child process (``python -m jobs.tracking.sender``).
        run_info_dir: with ``background``, the folder whose ``run.json`` gets the run id.
        sender_args: with ``background``, more arguments for the sender (its system metrics).
        release_wait_s: how long :meth:`finish` waits for the sender to send the records up
            to the run's end; past it the sender is stopped and the spool keeps the rest for a
            finisher outside the allocation (the launcher, the Ray driver, ``podrun sync``).
    """

    def __init__(
        self, tracking_uri: str, experiment: str, spool_dir: Path, *, run_id: str | None = None,
        run_name: str | None = None, retry_interval_s: float | None = None, request_timeout_s: int = 5,
        background: bool = False, run_info_dir: Path | None = None, sender_args: tuple[str, ...] = (),
        release_wait_s: float = SENDER_DRAIN_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.release_wait_s = release_wait_s
        self.spool = Spool(spool_dir)
        self.retry_interval_s = default_retry_interval() if retry_interval_s is None else retry_interval_s
        self.request_timeout_s = request_timeout_s
        self._secrets: frozenset[str] = frozenset()
        self._seq = 0
        self._sender: Sender | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._wake_fd: int | None = None
        self._ack_fd: int | None = None
        self._sender_args = sender_args
        self._sender_finishes = "--finish-here" in sender_args  # it outlives this process: never waited for
        self._start(tracking_uri, experiment, run_id, run_name, background, run_info_dir)

    @never_raise(None)
    def _start(self, uri: str, experiment: str, run_id: str | None, run_name: str | None, background: bool,
               run_info_dir: Path | None) -> None:
        uri = export_credentials(uri)  # a password never lands in the spool
        self._secrets = known_secret_values()
        self._wait_for_previous_sender()
        meta = self.spool.read_meta()
        if run_id and meta.get("run_id") not in (None, run_id):
            log.warning("tracking: spool %s belonged to run %s; continuing run %s instead",
                        self.spool.root, meta["run_id"], run_id)  # fmt: skip
        meta.update({key: value for key, value in (
            ("tracking_uri", uri), ("experiment", experiment), ("run_name", run_name), ("run_id", run_id)
        ) if value})  # fmt: skip
        meta["done"] = False
        self.spool.write_meta(meta)
        records, _ = self.spool.load()
        self._seq = max((record["seq"] for record in records), default=0)
        if background:
            self._spawn_sender(run_info_dir)
        else:
            self._sender = Sender(self.spool, retry_interval_s=self.retry_interval_s,
                                  request_timeout_s=self.request_timeout_s)
            self._sender.load_unsent()
        if meta.get("run_id") or self.pending:
            self._add({"kind": "start"})  # a resumed run is RUNNING again, in spool order
        self._flush(force=True)  # inline: creates a new run now, so run_id is known early

    def _wait_for_previous_sender(self, timeout_s: float = SENDER_DRAIN_TIMEOUT_S) -> None:
        """Wait while an earlier attempt's sender, which outlived its rank (``--finish-here``), still sends this spool.

        It holds the spool's finish lock until it is done; two senders on one spool would
        interleave their writes to meta.json and lose records.
        """
        if not self.spool.busy():
            return
        log.warning("tracking: the previous attempt's sender is still sending %s; waiting for it", self.spool.root)
        deadline = time.monotonic() + timeout_s
        while self.spool.busy() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _spawn_sender(self, run_info_dir: Path | None) -> None:
        read_fd, self._wake_fd = os.pipe()
        argv = [sys.executable, "-m", "jobs.tracking.sender", str(self.spool.root), "--wake-fd", "0",
                "--retry-interval", str(self.retry_interval_s)]
        ack_write = None
        if not self._sender_finishes:
            self._ack_fd, ack_write = os.pipe()
            argv += ["--ack-fd", str(ack_write)]
        if run_info_dir is not None:
            argv += ["--run-info", str(run_info_dir)]
        argv += self._sender_args
        # stdin is the pipe: it closes when finish() closes it or when this process dies
        self._process = subprocess.Popen(argv, stdin=read_fd, close_fds=True,
                                         pass_fds=() if ack_write is None else (ack_write,))
        os.close(read_fd)
        if ack_write is not None:
            os.close(ack_write)

    # ----------------------------------------------------------------- public calls

    def yield_to_ranks(self) -> None:
        """At ``run_start``: the sender process drops to ``nice`` +10 relative to this rank.

        Until then it shares the cores with the ranks' start-up (MLflow's import and the
        store's opening, about 3 s of CPU); from then on a busy core goes to the ranks' steps
        first. Where the priority cannot be changed, nothing changes.
        """
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            mine = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, self._process.pid, min(mine + SENDER_NICE, 19))

    @property
    def run_id(self) -> str | None:
        if self._sender is not None:
            return self._sender.run_id
        return self.spool.read_meta().get("run_id")

    @property
    def meta(self) -> dict[str, Any]:
        return self._sender.meta if self._sender is not None else self.spool.read_meta()

    @property
    def pending(self) -> int:
        """Records kept in the spool that the server has not received yet (inline mode)."""
        return len(self._sender.pending) if self._sender is not None else 0

    @never_raise(None)
    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters (nested dicts become ``a.b``); secrets are dropped, values truncated."""
        cleaned = clean_strings(params, "param", MAX_PARAM_VALUE, self._secrets)
        if cleaned:
            self._submit({"kind": "params", "params": cleaned})

    @never_raise(None)
    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags; secret-looking keys and values are dropped."""
        cleaned = clean_strings(tags, "tag", MAX_TAG_VALUE, self._secrets)
        if cleaned:
            self._submit({"kind": "tags", "tags": cleaned})

    @never_raise(None)
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics at ``step``, stamped with the time of this call."""
        cleaned = clean_metrics(metrics)
        if cleaned:
            self._submit({"kind": "metrics", "metrics": cleaned, "step": int(step),
                          "timestamp": int(time.time() * 1000)})  # fmt: skip

    @never_raise(None)
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder; if that cannot happen now, a copy waits in the spool.

        A text file goes up with its secrets masked (:func:`jobs.contract.secret_filter.mask_text`):
        the upload is then always the spool's masked copy.
        """
        path = Path(path)
        if not path.exists():
            log.warning("tracking: artifact %s does not exist; not logged", path)
            return
        record = {"kind": "artifact", "src": str(path.resolve()), "artifact_path": artifact_path}
        masked = self._masked_text(path)
        # sent later by the process, or masked: send the file as it is now, from the spool
        if self._sender is None or masked is not None:
            self._keep_copy(record, path, seq=self._seq + 1, text=masked)
            self._submit(record)
            return
        self._submit(record)
        if self._sender.pending and self._sender.pending[-1] is record:
            self._keep_copy(record, path)

    @never_raise(None)
    def log_record(self, record: dict[str, Any]) -> None:
        """Queue a run-page record (``dataset``, ``model``, ``run_page``) that the sender carries out."""
        if record.get("kind") not in RUN_PAGE_KINDS:
            raise ValueError(f"not a run-page record: {record.get('kind')!r}")
        self._submit(dict(record))

    @never_raise(False)
    def finish(self, status: RunStatus, after_release: tuple[dict[str, Any], ...] = ()) -> bool:
        """End the run with ``status``, then queue ``after_release`` (the model, the run page).

        True if every record up to the end reached the server. A sender process keeps the
        ``after_release`` records for a finisher that runs once the ranks have exited (its
        ``--finish-here``: itself, outliving this process); an inline one sends them now. When
        it returns False the spool keeps the rest for ``podrun sync``. A record of another kind
        in ``after_release`` is refused (a warning, like every tracking failure).
        """
        if any(record.get("kind") not in AFTER_RELEASE for record in after_release):
            raise ValueError(f"only {AFTER_RELEASE} records go after the run's end")
        self._add({"kind": "end", "status": status})
        for record in after_release:
            self._add(dict(record))
        if self._sender is None:
            return self._wait_for_sender(self.release_wait_s, handed_over=True)
        if not self._flush(force=True):
            return False
        self._sender.mark_done()
        return True

    def close(self) -> None:
        """Stop the sender without ending the run (a crashed rank): it sends what there is, then exits."""
        if self._wake_fd is not None:
            self._wait_for_sender(timeout_s=60)

    # ----------------------------------------------------------------- internals

    def _add(self, record: dict[str, Any]) -> None:
        self._seq += 1
        record["seq"] = self._seq
        self.spool.append(record)
        if self._sender is not None:
            self._sender.accept(record)

    def _submit(self, record: dict[str, Any]) -> None:
        self._add(record)
        self._flush()

    def _flush(self, force: bool = False) -> bool:
        if self._sender is not None:
            return self._sender.flush(force)
        if self._wake_fd is not None:
            try:
                os.write(self._wake_fd, b".")
            except OSError:  # the sender is gone: the spool keeps everything for `podrun sync`
                pass
        return False

    def _wait_for_sender(self, timeout_s: float = SENDER_DRAIN_TIMEOUT_S, handed_over: bool = False) -> bool:
        """Close the wake pipe and wait for the sender's go-ahead; True if the records up to the end went out.

        A sender that finishes the run itself is not waited for (True: it has every record).
        ``handed_over`` (the run has ended): a sender stopped at ``timeout_s`` leaves the spool
        marked for a finisher, which sends the rest once the ranks have exited.
        """
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._sender_finishes:
            self._process = None
            return True
        if self._process is not None:
            if not self._sender_released(timeout_s, until_run=handed_over):
                self._process.kill()
                self._process.wait()
                self._process = None
                if handed_over:
                    self._hand_over()
                else:
                    log.warning("tracking: the MLflow sender did not finish in %.0f s; the spool keeps the rest "
                                "(podrun sync)", timeout_s)
                return False
            self._process.poll()  # not waited for: one that finishes the run itself lives on, the others exit now
            self._process = None
        meta = self.spool.read_meta()
        return bool(meta.get("done") or meta.get("registering"))

    def _hand_over(self) -> None:
        """Mark the spool of a stopped sender as waiting for a finisher (``podrun status`` says registering)."""
        meta = self.spool.read_meta()
        if meta and not meta.get("done"):
            self.spool.write_meta({**meta, "registering": True})

    def _sender_released(self, timeout_s: float, until_run: bool = False) -> bool:
        """Wait for a byte (or end of file: the sender exited) on the go-ahead pipe.

        ``until_run``: past ``timeout_s``, go on waiting while the sender has not created the
        run yet. Stopped while it creates a sqlite store's tables (several commits), it would
        leave a store that no finisher can open ("table ... already exists").
        """
        if self._ack_fd is None:
            return True
        try:
            readable, _, _ = select.select([self._ack_fd], [], [], timeout_s)
            deadline = time.monotonic() + SENDER_DRAIN_TIMEOUT_S
            while until_run and not readable and not self.spool.read_meta().get("run_id") \
                    and time.monotonic() < deadline:
                readable, _, _ = select.select([self._ack_fd], [], [], 0.05)
            return bool(readable)
        finally:
            os.close(self._ack_fd)
            self._ack_fd = None

    def _masked_text(self, path: Path) -> str | None:
        """A text file's content with secrets masked, if masking changes it (None otherwise)."""
        if not path.is_file() or path.stat().st_size > MAX_MASKED_BYTES:
            return None
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            return None
        masked = mask_text(text, self._secrets)
        return masked if masked != text else None

    def _keep_copy(self, record: dict[str, Any], path: Path, seq: int | None = None, text: str | None = None) -> None:
        target = self.spool.artifact_copy(record["seq"] if seq is None else seq) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            target.write_text(text)
        elif path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target)
