"""Sending a spool to MLflow: in order, once, with backoff while the server is away.

A :class:`Sender` owns the records of one spool that MLflow has not acknowledged yet. It
creates the run on first contact (or checks the one it continues), sends metrics in
batches, and after a failure waits ``retry_interval_s`` before trying again; a record
MLflow itself rejects is skipped with a warning. It runs in three places:

* inside a :class:`jobs.tracking.tracker.Tracker` (``background=False``, tests and tools);
* as rank 0's sender process, ``python -m jobs.tracking.sender SPOOL`` (what a training run uses):
  it follows ``records.jsonl`` while the rank appends to it and drains it when the rank
  finishes or dies, so neither MLflow's import nor its requests touch the training loop.
  It starts at the rank's priority, so that MLflow's import and the store's opening share the
  cores with the ranks' start-up, and drops to ``nice`` +10 at ``run_start``
  (:meth:`jobs.tracking.tracker.Tracker.yield_to_ranks`): the timed run never waits for it.
  MLflow's and SQLAlchemy's own output goes to ``--log-file`` (the job's ``logs/tracking.log``),
  podrun's warnings to the rank log;
* in ``podrun sync`` (:func:`replay_spool`), for what an outage left behind.

The run's ``model`` and ``run_page`` records come after its ``end`` and wait until every rank
has exited, so that no GPU idles while a model is exported; ``--ack-fd`` tells the rank when
the records before them went out (:class:`jobs.tracking.tracker.Tracker` says how long it
waits). With ``--finish-here`` (local backend) this process outlives its rank and sends the
rest itself (:mod:`jobs.tracking.release`); elsewhere the launcher, the Ray driver or
``podrun sync`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jobs.contract.secret_filter import export_credentials, install_log_masking, split_credentials
from jobs.tracking import mlflow_send
from jobs.tracking.mlflow_errors import describe, is_permanent, limit_http_retries, retry_advice
from jobs.tracking.mlflow_send import METRICS_PER_BATCH
from jobs.tracking.release import cpu_s, finish_after_ranks, leave_rank, preload_run_page, record_release, release_rank
from jobs.tracking.spool import AFTER_RELEASE, META_FILE, Spool, SpoolError
from jobs.tracking.system_metrics import divert_library_output, ignore_stop_signals

log = logging.getLogger("jobs.tracking.tracker")

OnRun = Callable[[str, "str | None"], None]
SENDER_NICE = 10  # from run_start: below the ranks, whose steps it must never slow


class Sender:
    """Sends a spool's pending records in order; :meth:`flush` never raises."""

    def __init__(self, spool: Spool, *, retry_interval_s: float = 30.0, request_timeout_s: int = 5,
                 on_run: OnRun | None = None) -> None:
        self.spool, self.retry_interval_s, self.request_timeout_s = spool, retry_interval_s, request_timeout_s
        self.on_run = on_run
        self.meta: dict[str, Any] = spool.read_meta()
        self.run_id: str | None = self.meta.get("run_id")
        self.pending: list[dict[str, Any]] = []
        self.records_sent, self.last_error = 0, None
        self._next_try, self._offline = 0.0, False
        self._client: Any = None
        self._run_checked = False
        self._offset = 0
        self._sent_seq = 0
        self.ended = False
        self.hold = False  # a rank's sender: keep the records after the run's end (AFTER_RELEASE) for a finisher
        self.finish_here = False  # this sender may outlive its rank, and sends them itself

    def load_unsent(self) -> None:
        """Read every record the spool holds beyond the sent watermark."""
        _, self._sent_seq = self.spool.load()
        self.read_new()

    def read_new(self) -> int:
        """Take the records appended to the spool since the last call; returns how many."""
        records, self._offset = self.spool.read_new_records(self._offset)
        fresh = [record for record in records if record["seq"] > self._sent_seq]
        self.pending.extend(fresh)
        return len(fresh)

    def accept(self, record: dict[str, Any]) -> None:
        """Take a record its writer just appended to the spool (the inline tracker)."""
        self.pending.append(record)
        self._offset = self.spool.records_size()

    @property
    def finished(self) -> bool:
        """The run's end record went out: nothing more will come."""
        return not self.pending and self.ended

    @property
    def released(self) -> bool:
        """Everything up to the run's end went out; what is left waits for the ranks to exit."""
        return self.ended and bool(self.pending) and self._held(self.pending[0])

    def _held(self, record: dict[str, Any]) -> bool:
        return self.hold and self.ended and record["kind"] in AFTER_RELEASE

    def warm_up(self) -> None:
        """Import MLflow and open the store now, while the rank starts, instead of at the first record."""
        try:
            self._client_for_uri()
        except Exception as exc:  # noqa: BLE001 - the first flush reports it
            log.debug("tracking: warm-up failed (%s)", describe(exc))

    def flush(self, force: bool = False) -> bool:
        """Send pending records in order; True when none is left. Never raises."""
        if not self.pending and self.run_id:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            client = self._connect()
            while self.pending and not self._held(self.pending[0]):
                self._send_group(client, self._next_group())
        except Exception as exc:  # noqa: BLE001 - unreachable, 5xx, timeouts: keep and retry
            self._go_offline(exc)
            return False
        self._back_online()
        return True

    def mark_done(self) -> None:
        """Record that the run's records all reached the server."""
        self.meta["done"], self.meta["done_at"] = True, round(time.time(), 3)
        self.meta.pop("registering", None)
        self.spool.write_meta(self.meta)

    def mark_registering(self) -> None:
        """Record that the ranks' records went out and the model and run page wait (``podrun status``)."""
        self.meta["registering"] = True
        self.spool.write_meta(self.meta)

    # ----------------------------------------------------------------- internals

    def _go_offline(self, exc: BaseException) -> None:
        self.last_error = describe(exc)
        self._next_try = time.monotonic() + self.retry_interval_s
        if not self._offline:
            log.warning("tracking: MLflow at %s unavailable (%s); keeping records in %s, "
                        "retrying every %.0f s", self.meta.get("tracking_uri"), self.last_error,
                        self.spool.root, self.retry_interval_s)  # fmt: skip
        self._offline = True

    def _back_online(self) -> None:
        if self._offline:
            log.warning("tracking: MLflow reachable again; the kept records were sent")
        self._offline, self.last_error = False, None

    def _next_group(self) -> list[dict[str, Any]]:
        """The next record, or a run of consecutive metrics records for one log_batch."""
        group = [self.pending[0]]
        if group[0]["kind"] != "metrics":
            return group
        count = len(group[0]["metrics"])
        for record in self.pending[1:]:
            count += len(record.get("metrics", ()))
            if record["kind"] != "metrics" or count > METRICS_PER_BATCH:
                break
            group.append(record)
        return group

    def _send_group(self, client: Any, group: list[dict[str, Any]]) -> None:
        """Send one group; a group MLflow rejects is retried record by record, then dropped."""
        try:
            mlflow_send.send_records(client, self.run_id, group, self._artifact_source(group[0]),
                                     self.meta["tracking_uri"])
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(group) > 1:
                for record in group:
                    self._send_group(client, [record])
                return
            log.warning("tracking: MLflow rejected a %s record (%s); skipped it",
                        group[0]["kind"], describe(exc))  # fmt: skip
            self._acknowledge(group, ok=False)
            return
        self._acknowledge(group, ok=True)

    def _acknowledge(self, records: list[dict[str, Any]], ok: bool) -> None:
        for record in records:
            self.spool.mark_sent(record["seq"], ok)
            self._sent_seq = max(self._sent_seq, record["seq"])
            if record["kind"] == "artifact":
                shutil.rmtree(self.spool.artifact_copy(record["seq"]), ignore_errors=True)
            if record["kind"] == "end":
                self.ended = True
        self.records_sent += len(records) if ok else 0
        del self.pending[: len(records)]

    def _artifact_source(self, record: dict[str, Any]) -> Path | None:
        if record["kind"] != "artifact":
            return None
        src = Path(record["src"])
        copy = self.spool.artifact_copy(record["seq"]) / src.name
        return copy if copy.exists() else src  # the spool's copy is the file as it was logged

    def _connect(self) -> Any:
        """The client, with the run created (or checked) on first contact."""
        client = self._client_for_uri()
        if not self._run_checked:
            self._ensure_run(client)
            self._run_checked = True
        return client

    def _client_for_uri(self) -> Any:
        if self._client is None:
            limit_http_retries(self.request_timeout_s)
            self._client = mlflow_send.new_client(self.meta["tracking_uri"])
        return self._client

    def _ensure_run(self, client: Any) -> None:
        uri = self.meta["tracking_uri"]
        found = mlflow_send.find_run(client, self.run_id, uri) if self.run_id else None
        if found is not None:
            self.meta["experiment_id"] = found
        else:
            experiment = mlflow_send.experiment_id(client, self.meta.get("experiment") or "Default", uri)
            run = client.create_run(experiment, run_name=self.meta.get("run_name"))
            self.run_id = self.meta["run_id"] = run.info.run_id
            self.meta["experiment_id"] = experiment
        self.spool.write_meta(self.meta)
        if self.on_run is not None:
            self.on_run(self.run_id, self.meta.get("experiment_id"))


def open_sender(spool_dir: Path, tracking_uri: str | None = None, **kwargs: Any) -> Sender:
    """A sender over an existing spool, with its unsent records loaded.

    Raises:
        SpoolError: there is no spool at ``spool_dir``, or it names no tracking URI.
    """
    spool = Spool(spool_dir)
    if not spool.exists():
        raise SpoolError(f"{spool_dir}: no tracking spool here ({META_FILE} is missing)")
    sender = Sender(spool, **kwargs)
    if tracking_uri:
        sender.meta["tracking_uri"] = export_credentials(tracking_uri)  # no password in meta.json
    if not sender.meta.get("tracking_uri"):
        raise SpoolError(f"{spool_dir}: the spool names no tracking URI; pass one")
    own = os.environ.get("MLFLOW_TRACKING_URI", "")
    if split_credentials(own)[0] == sender.meta["tracking_uri"]:  # `podrun sync` with the password in $MLFLOW_...
        export_credentials(own)
    sender.load_unsent()
    return sender


def replay_spool(spool_dir: Path, tracking_uri: str | None = None, released_at: float | None = None,
                 run_info_dir: Path | None = None) -> int:
    """Send what a spool kept (``podrun sync``, and every finisher); returns the number of records sent.

    The run is created if it never was; afterwards the spool is marked done, and a second
    replay sends nothing. ``tracking_uri`` defaults to the one in the spool's meta.json.
    While another finisher sends this spool, it waits for it (the model is registered once).
    With ``released_at`` (when the last rank exited) and ``run_info_dir`` (the checkpoint
    folder, whose run.json holds ``run_stop``), ``device_release_s`` is recorded first.

    Raises:
        SpoolError: no spool at ``spool_dir``, or records remain because the server is
            still unreachable (those sent so far are not sent again).
    """
    spool = Spool(spool_dir)
    if not spool.exists():
        raise SpoolError(f"{spool_dir}: no tracking spool here ({META_FILE} is missing)")
    with spool.finishing():
        # a run first created here (its sender died before) is named in run.json, as the sender would
        sender = open_sender(Path(spool_dir), tracking_uri, retry_interval_s=0.0, on_run=write_run_id(run_info_dir))
        if released_at is not None and run_info_dir is not None:
            record_release(sender, run_info_dir, released_at)
        if sender.pending and not sender.flush(force=True):
            raise SpoolError(
                f"{spool_dir}: sent {sender.records_sent} record(s), {len(sender.pending)} still kept; "
                f"MLflow at {sender.meta['tracking_uri']} failed ({sender.last_error}); "
                f"{retry_advice(sender.last_error)}"
            )
        sender.mark_done()
        return sender.records_sent


@contextlib.contextmanager
def library_output(log_file: Path) -> Iterator[None]:
    """Meanwhile, MLflow's prints and log lines go to ``log_file`` (the job's ``logs/tracking.log``), not the console.

    For a finisher that is not the sender process (the launcher, the Ray driver), whose own
    output must stay where it is.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8", errors="backslashreplace") as file:
        handlers = [handler for name in ("mlflow", "alembic", "sqlalchemy", "")
                    for handler in logging.getLogger(name).handlers
                    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]
        streams = [handler.setStream(file) for handler in handlers]
        try:
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
                yield
        finally:
            for handler, stream in zip(handlers, streams):
                if stream is not None:
                    handler.setStream(stream)


# --------------------------------------------------------------------------- the sender process


def follow(sender: Sender, wake_fd: int, drain: bool = True) -> None:
    """Send records as the rank appends them; return once ``wake_fd`` closes (rank finished or died).

    Each byte on ``wake_fd`` says "new records"; end of file means no more will come. With
    ``drain`` the backlog is then sent once more (a failure leaves it for ``podrun sync``).
    """
    first = True
    while True:
        wait = max(sender._next_try - time.monotonic(), 0.05) if sender._offline else None
        readable, _, _ = select.select([wake_fd], [], [], wait)
        closing = bool(readable) and not os.read(wake_fd, 4096)
        sender.read_new()
        if closing and not drain:
            return
        if sender.pending:
            sender.flush(force=first or closing)
            first = False
        if closing:
            return


def write_run_id(run_info_dir: Path | None) -> OnRun | None:
    """A callback that keeps the run id in ``run.json`` beside the checkpoints."""
    if run_info_dir is None:
        return None
    from jobs.contract.checkpoint_index import update_run_info

    def remember(run_id: str, experiment_id: str | None) -> None:
        update_run_info(run_info_dir, mlflow_run_id=run_id, mlflow_experiment_id=experiment_id)

    return remember


class NodeMetrics:
    """This node's system metrics (:mod:`jobs.tracking.system_metrics`), started once the run exists."""

    def __init__(self, node: str | None, interval_s: float, then: OnRun | None) -> None:
        self.node, self.interval_s, self.then = node, interval_s, then
        self.monitor: object | None = None
        self.tracking_uri = ""

    def on_run(self, run_id: str, experiment_id: str | None) -> None:
        if self.then is not None:
            self.then(run_id, experiment_id)
        if self.node and self.monitor is None:
            from jobs.tracking.system_metrics import start_monitor

            self.monitor = start_monitor(run_id, self.tracking_uri, self.node, self.interval_s)

    def stop(self) -> None:
        from jobs.tracking.system_metrics import stop_monitor

        stop_monitor(self.monitor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tracking.sender",
                                     description="send a spool to MLflow as it grows")
    parser.add_argument("spool", type=Path)
    parser.add_argument("--wake-fd", type=int, default=0, help="bytes here mean new records; EOF: finish")
    parser.add_argument("--ack-fd", type=int, help="a byte here tells the rank its records went out (it may exit)")
    parser.add_argument("--finish-here", action="store_true",
                        help="outlive the rank: send the model and run page once the ranks have exited (local backend)")
    parser.add_argument("--run-info", type=Path, help="the checkpoint folder whose run.json keeps the run id")
    parser.add_argument("--retry-interval", type=float, default=30.0)
    parser.add_argument("--system-metrics", metavar="NODE", help="also log this node's system metrics as NODE")
    parser.add_argument("--system-metrics-interval", type=float, default=10.0)
    parser.add_argument("--log-file", type=Path, help="MLflow's and SQLAlchemy's own log lines and prints go here")
    args = parser.parse_args(argv)
    ignore_stop_signals()
    divert_library_output(args.log_file)  # before MLflow is imported: its lines never reach the rank log
    install_log_masking()
    try:
        return _send(args)
    except Exception:
        log.exception("tracking: the MLflow sender failed")  # on the rank log, not in tracking.log
        return 1


def _send(args: argparse.Namespace) -> int:
    metrics = NodeMetrics(args.system_metrics, args.system_metrics_interval, write_run_id(args.run_info))
    sender = open_sender(args.spool, retry_interval_s=args.retry_interval, on_run=metrics.on_run)
    sender.hold, sender.finish_here = True, args.finish_here
    metrics.tracking_uri = sender.meta["tracking_uri"]
    if sender.finish_here:
        return _send_then_finish(sender, metrics, args)
    sender.warm_up()
    try:
        follow(sender, args.wake_fd)
    finally:
        metrics.stop()
    if sender.finished:
        sender.mark_done()
    elif sender.released:
        sender.mark_registering()
    release_rank(args.ack_fd)
    return 0


def _send_then_finish(sender: Sender, metrics: NodeMetrics, args: argparse.Namespace) -> int:
    """The local backend: the rank never waits for this process, which sends the rest once the ranks have exited.

    It holds the spool's finish lock from the start, so a launcher or ``podrun sync`` that wants
    to send the spool waits for it instead of racing it.
    """
    rank_pid = os.getppid()
    with sender.spool.finishing():
        sender.warm_up()
        preload_run_page()  # now, during the ranks' start-up, rather than once the run has ended
        try:
            follow(sender, args.wake_fd, drain=False)
        finally:
            metrics.stop()
        sender.meta["sender_cpu_s"] = {"run": round(cpu_s(), 2)}  # until it saw the run end (bench/launch_overhead.py)
        if sender.ended or any(record["kind"] == "end" for record in sender.pending):
            sender.mark_registering()
        leave_rank()
        finish_after_ranks(sender, rank_pid, args.run_info)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every record is on disk and acknowledged: skip MLflow's and SQLAlchemy's exit handlers,
    # which take seconds, while the rank waits for this process.
    os._exit(code)
