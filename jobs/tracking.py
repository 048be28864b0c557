"""MLflow tracking for rank 0 that never crashes or stalls a training run.

Every call is first appended to a spool under ``spool_dir`` and then sent; while the
tracking server is unreachable the records stay there, and sending is retried at most
every ``retry_interval_s`` seconds (and once more in :meth:`Tracker.finish`). When the
server answers again the run is created if it never was, and the spool is replayed in
order. What a ``podrun sync`` sends later comes from :func:`replay_spool`.

Spool layout (one spool holds one MLflow run; keep one spool per job across attempts)::

    meta.json       tracking_uri, experiment, run_name, run_id (once known), done
    records.jsonl   append-only: {"seq", "kind", ...} for start/params/tags/metrics/artifact/end
    sent.jsonl      append-only: {"seq", "ok"}; records are sent in order, so the highest
                    seq is the watermark and nothing is sent twice
    artifacts/<seq>/  a copy of an artifact that could not be sent when it was logged

Usage (rank 0 only)::

    tracker = Tracker(job.tracking_uri, "resnet50", job_dir / "mlflow-spool", run_id=saved_id)
    tracker.log_params({"recipe": recipe.model_dump()})
    tracker.log_metrics({"train/loss": 2.3}, step=100)
    ok = tracker.finish("FINISHED")   # False: records are kept for `podrun sync`
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from orchestrator.errors import PodrunError

log = logging.getLogger(__name__)

META_FILE = "meta.json"
RECORDS_FILE = "records.jsonl"
SENT_FILE = "sent.jsonl"
ARTIFACTS_DIR = "artifacts"

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
T = TypeVar("T")


class SpoolError(PodrunError):
    """A spool is missing, or its records could not all be sent."""


# --------------------------------------------------------------------------- secrets

# "tokenizer", "max_tokens" and "author" are ordinary names; "authorization" is not
_SECRET_KEY = re.compile(
    r"token(?!iz|s)|passw(?:or)?d|secret|api[_-]?key|credential|private[_-]?key"
    r"|auth(?!or(?!iz))",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{20,}|glpat-[\w-]{20,}|hf_[A-Za-z0-9]{30,}"
    r"|sk-[\w-]{20,}|xox[abprs]-[\w-]{10,}|AKIA[0-9A-Z]{16})"
    r"|\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\."  # a JWT
    r"|://[^/\s:@]+:[^/\s@]+@"  # user:password@ in a URL
)
_LONG_RUN = re.compile(r"[A-Za-z0-9]{24,}")


def secret_reason(key: str, value: str, known_secrets: frozenset[str] = frozenset()) -> str | None:
    """Why ``key``/``value`` must not be logged (``None`` if it may be)."""
    if _SECRET_KEY.search(key):
        return "its name looks secret"
    if _SECRET_VALUE.search(value) or any(secret in value for secret in known_secrets):
        return "its value looks like a secret"
    if any(_mixed_case_and_digits(run) for run in _LONG_RUN.findall(value)):
        return "its value looks like a token"
    return None


def _mixed_case_and_digits(text: str) -> bool:
    # git SHAs and run ids are lower-case hex; random tokens mix all three classes
    return any(c.isupper() for c in text) and any(c.islower() for c in text) and any(
        c.isdigit() for c in text
    )


def known_secret_values() -> frozenset[str]:
    """Values of secret-named environment variables (e.g. ``RAY_AUTH_TOKEN``) and Ray's token."""
    values = {value for name, value in os.environ.items() if _SECRET_KEY.search(name)}
    ray_token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    try:
        values.add(ray_token.read_text().strip())
    except OSError:
        pass
    # a path (SSH_AUTH_SOCK) is not a secret, and short values would match everywhere
    return frozenset(v for v in values if len(v) >= 12 and not v.startswith(("/", "~")))


# --------------------------------------------------------------------------- cleaning


def sanitize_key(key: Any) -> str:
    """Make ``key`` a name MLflow accepts: allowed characters, no empty or dot path parts."""
    cleaned = re.sub(r"[^\w.\- :/]", "_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return "/".join(parts)[:MAX_KEY].rstrip("/") or "_"


def flatten(mapping: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``("a.b", value)`` for nested mappings such as ``recipe.model_dump()``."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def clean_strings(
    items: dict[str, Any], what: str, limit: int, known_secrets: frozenset[str]
) -> dict[str, str]:
    """Flatten, drop secrets (warning names the key only), sanitize keys, truncate values."""
    cleaned: dict[str, str] = {}
    for key, value in flatten(items):
        text = value if isinstance(value, str) else str(value)
        reason = secret_reason(key, text, known_secrets)
        if reason:
            log.warning("tracking: dropped %s %r: %s", what, key, reason)
            continue
        cleaned[sanitize_key(key)] = text[:limit]
    return cleaned


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Sanitize metric names and turn values (tensors included) into floats."""
    cleaned: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            cleaned[sanitize_key(key)] = float(value)
        except (TypeError, ValueError):
            log.warning("tracking: dropped metric %r: %r is not a number", key, type(value).__name__)
    return cleaned


# --------------------------------------------------------------------------- spool


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

    def artifact_copy(self, seq: int) -> Path:
        return self.root / ARTIFACTS_DIR / str(seq)


# --------------------------------------------------------------------------- errors


def limit_http_retries(timeout_s: int) -> None:
    """Make an unreachable server cost one attempt of ``timeout_s``: the spool retries."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    os.environ[MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name] = "1"
    os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(max(1, int(timeout_s)))


# MLflow answered and refused the request itself: sending it again cannot help. Anything
# else (no answer, timeouts, 5xx, 401/403, a proxy's bare 404) keeps the record for later.
PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
})  # fmt: skip


def is_permanent(exc: BaseException) -> bool:
    """True if MLflow rejected the request (bad value, changed param, deleted run)."""
    return getattr(exc, "error_code", None) in PERMANENT_ERROR_CODES


def describe(exc: BaseException) -> str:
    """One short line for a warning."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}"


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


# --------------------------------------------------------------------------- tracker


class Tracker:
    """MLflow run tracking for rank 0; no method raises and an outage costs seconds.

    Args:
        tracking_uri: ``http(s)://...`` for a server, or ``sqlite:///<file>``.
        experiment: created if missing (for sqlite with artifacts next to the db file).
        spool_dir: where records wait for the server; reuse it when the job resumes.
        run_id: continue this run (set RUNNING again). Without it the spool's own run id
            is used, or a new run is created.
        run_name: name for a new run.
        retry_interval_s: after a failure, the least time before the next attempt.
        request_timeout_s: HTTP timeout of one attempt.
    """

    def __init__(
        self, tracking_uri: str, experiment: str, spool_dir: Path, *, run_id: str | None = None,
        run_name: str | None = None, retry_interval_s: float = 30.0, request_timeout_s: int = 5,
    ) -> None:  # fmt: skip
        self._reset(Spool(spool_dir), retry_interval_s)
        self._start(tracking_uri, experiment, run_id, run_name, request_timeout_s)

    def _reset(self, spool: Spool, retry_interval_s: float) -> None:
        self.spool, self.retry_interval_s = spool, retry_interval_s
        self.run_id: str | None = None
        self.meta: dict[str, Any] = {}
        self.records_sent, self.last_error = 0, None
        self._pending: list[dict[str, Any]] = []
        self._seq, self._next_try, self._offline = 0, 0.0, False
        self._client: Any = None
        self._run_checked = False
        self._secrets: frozenset[str] = frozenset()

    @never_raise(None)
    def _start(
        self, uri: str, experiment: str, run_id: str | None, run_name: str | None, timeout: int
    ) -> None:
        limit_http_retries(timeout)
        self._secrets = known_secret_values()
        self._open_spool(uri, experiment, run_id, run_name)
        if self.run_id or self._pending:
            self._add({"kind": "start"})  # a resumed run is RUNNING again, in spool order
        self._flush(force=True)  # also creates a new run now, so run_id is known early

    def _open_spool(
        self, uri: str | None, experiment: str | None, run_id: str | None, name: str | None
    ) -> None:
        meta = self.spool.read_meta()
        if run_id and meta.get("run_id") not in (None, run_id):
            log.warning("tracking: spool %s belonged to run %s; continuing run %s instead",
                        self.spool.root, meta["run_id"], run_id)  # fmt: skip
        meta.update({key: value for key, value in (
            ("tracking_uri", uri), ("experiment", experiment), ("run_name", name), ("run_id", run_id)
        ) if value})  # fmt: skip
        meta["done"] = False
        self.meta, self.run_id = meta, meta.get("run_id")
        self.spool.write_meta(meta)
        records, sent = self.spool.load()
        self._seq = max((record["seq"] for record in records), default=0)
        self._pending = [record for record in records if record["seq"] > sent]

    @classmethod
    def for_replay(cls, spool_dir: Path, tracking_uri: str | None = None) -> Tracker:
        """A tracker over an existing spool that adds no records of its own.

        Raises:
            SpoolError: there is no spool at ``spool_dir``.
        """
        spool = Spool(spool_dir)
        if not spool.exists():
            raise SpoolError(f"{spool_dir}: no tracking spool here ({META_FILE} is missing)")
        tracker = cls.__new__(cls)
        tracker._reset(spool, retry_interval_s=0.0)
        limit_http_retries(5)
        tracker._open_spool(tracking_uri, None, None, None)
        if not tracker.meta.get("tracking_uri"):
            raise SpoolError(f"{spool_dir}: the spool names no tracking URI; pass one")
        return tracker

    # ----------------------------------------------------------------- public calls

    @property
    def pending(self) -> int:
        """Records kept in the spool that the server has not received yet."""
        return len(self._pending)

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
            record = {"kind": "metrics", "metrics": cleaned, "step": int(step),
                      "timestamp": int(time.time() * 1000)}  # fmt: skip
            self._submit(record)

    @never_raise(None)
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder; if that cannot happen now, a copy waits in the spool."""
        path = Path(path)
        if not path.exists():
            log.warning("tracking: artifact %s does not exist; not logged", path)
            return
        record = {"kind": "artifact", "src": str(path.resolve()), "artifact_path": artifact_path}
        self._submit(record)
        if self._pending and self._pending[-1] is record:
            self._keep_copy(record, path)

    @never_raise(False)
    def finish(self, status: RunStatus) -> bool:
        """End the run with ``status``; True if every record reached the server.

        When it returns False the spool keeps the rest for ``podrun sync``.
        """
        self._add({"kind": "end", "status": status})
        if not self._flush(force=True):
            return False
        self._mark_done()
        return True

    # ----------------------------------------------------------------- spooling

    def _add(self, record: dict[str, Any]) -> None:
        self._seq += 1
        record["seq"] = self._seq
        self.spool.append(record)
        self._pending.append(record)

    def _submit(self, record: dict[str, Any]) -> None:
        self._add(record)
        self._flush()

    def _keep_copy(self, record: dict[str, Any], path: Path) -> None:
        target = self.spool.artifact_copy(record["seq"]) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target)

    def _acknowledge(self, records: list[dict[str, Any]], ok: bool) -> None:
        for record in records:
            self.spool.mark_sent(record["seq"], ok)
            if record["kind"] == "artifact":
                shutil.rmtree(self.spool.artifact_copy(record["seq"]), ignore_errors=True)
        self.records_sent += len(records) if ok else 0
        del self._pending[: len(records)]

    # ----------------------------------------------------------------- sending

    def _flush(self, force: bool = False) -> bool:
        """Send pending records in order; True when none is left. Never raises."""
        if not self._pending and self.run_id:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            client = self._connect()
            while self._pending:
                self._send_group(client, self._next_group())
        except Exception as exc:  # noqa: BLE001 - unreachable, 5xx, timeouts: keep and retry
            self._go_offline(exc)
            return False
        self._back_online()
        return True

    def _mark_done(self) -> None:
        """Record that the run's records all reached the server (after finish or a replay)."""
        self.meta["done"] = True
        self.spool.write_meta(self.meta)

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
        group = [self._pending[0]]
        if group[0]["kind"] != "metrics":
            return group
        count = len(group[0]["metrics"])
        for record in self._pending[1:]:
            count += len(record.get("metrics", ()))
            if record["kind"] != "metrics" or count > METRICS_PER_BATCH:
                break
            group.append(record)
        return group

    def _send_group(self, client: Any, group: list[dict[str, Any]]) -> None:
        """Send one group; a group MLflow rejects is retried record by record, then dropped."""
        try:
            self._send(client, group)
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

    def _send(self, client: Any, group: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        record, run_id = group[0], self.run_id
        kind = record["kind"]
        if kind == "metrics":
            metrics = [Metric(key, value, r["timestamp"], r["step"])
                       for r in group for key, value in r["metrics"].items()]  # fmt: skip
            for chunk in _chunks(metrics, METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=chunk)
        elif kind == "params":
            self._send_params(client, [Param(k, v) for k, v in record["params"].items()])
        elif kind == "tags":
            for chunk in _chunks([RunTag(k, v) for k, v in record["tags"].items()], PARAMS_PER_BATCH):
                client.log_batch(run_id, tags=chunk)
        elif kind == "artifact":
            self._send_artifact(client, record)
        elif kind == "start":
            client.update_run(run_id, status="RUNNING")
        elif kind == "end":
            client.set_terminated(run_id, status=record["status"])

    def _send_params(self, client: Any, params: list[Any], size: int = PARAMS_PER_BATCH) -> None:
        """Batches of 100; a rejected batch (a changed value on a resumed run) goes one by one."""
        for chunk in _chunks(params, size):
            try:
                client.log_batch(self.run_id, params=chunk)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                if size > 1:
                    self._send_params(client, chunk, size=1)
                else:
                    log.warning("tracking: MLflow rejected param %r (%s)", chunk[0].key, describe(exc))

    def _send_artifact(self, client: Any, record: dict[str, Any]) -> None:
        src = Path(record["src"])
        copy = self.spool.artifact_copy(record["seq"]) / src.name
        source = copy if copy.exists() else src  # the spool's copy is the file as it was logged
        if not source.exists():
            log.warning("tracking: artifact %s is gone; skipped it", record["src"])
            return
        client.log_artifact(self.run_id, str(source), record.get("artifact_path"))

    # ----------------------------------------------------------------- the run

    def _connect(self) -> Any:
        """The client, with the run created (or checked) on first contact."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.meta["tracking_uri"])
        if not self._run_checked:
            self._ensure_run(self._client)
            self._run_checked = True
        return self._client

    def _ensure_run(self, client: Any) -> None:
        from mlflow.exceptions import MlflowException

        if self.run_id:
            try:
                self.meta["experiment_id"] = client.get_run(self.run_id).info.experiment_id
                return
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("tracking: run %s does not exist at %s; starting a new run",
                            self.run_id, self.meta["tracking_uri"])  # fmt: skip
        experiment_id = self._experiment_id(client)
        run = client.create_run(experiment_id, run_name=self.meta.get("run_name"))
        self.run_id = self.meta["run_id"] = run.info.run_id
        self.meta["experiment_id"] = experiment_id
        self.spool.write_meta(self.meta)

    def _experiment_id(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        name = self.meta.get("experiment") or "Default"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_location(
                    self.meta["tracking_uri"]))  # fmt: skip
            except MlflowException as exc:  # another job created it meanwhile
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id


def artifact_location(tracking_uri: str) -> str | None:
    """For ``sqlite:///<db>``: ``<db dir>/mlartifacts`` as a file URI, not a cwd-relative path."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None  # a server chooses its own (proxied) artifact store
    db_file = Path(tracking_uri[len(prefix):].split("?", 1)[0])
    return (db_file.resolve().parent / "mlartifacts").as_uri()


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def replay_spool(spool_dir: Path, tracking_uri: str | None = None) -> int:
    """Send what a spool kept (``podrun sync``); returns the number of records sent.

    The run is created if it never was; afterwards the spool is marked done, and a second
    replay sends nothing. ``tracking_uri`` defaults to the one in the spool's meta.json.

    Raises:
        SpoolError: no spool at ``spool_dir``, or records remain because the server is
            still unreachable (those sent so far are not sent again).
    """
    tracker = Tracker.for_replay(Path(spool_dir), tracking_uri)
    if tracker.pending and not tracker._flush(force=True):
        raise SpoolError(
            f"{spool_dir}: sent {tracker.records_sent} record(s), {tracker.pending} still kept; "
            f"MLflow at {tracker.meta['tracking_uri']} failed ({tracker.last_error}); "
            "run `podrun sync` again when it is reachable"
        )
    tracker._mark_done()
    return tracker.records_sent


def spool_pending(spool_dir: Path) -> bool:
    """True if ``spool_dir`` holds records that never reached MLflow (``podrun sync`` sends them)."""
    try:
        return not json.loads((Path(spool_dir) / "meta.json").read_text()).get("done", False)
    except (OSError, ValueError):
        return False
