"""Sending spooled records to MLflow: one client call per record kind, and MLflow's error rules.

Only the tracker's sender (:class:`jobs.tracking.tracker.Tracker`) calls these, on rank 0, in its
background thread; MLflow is imported here and nowhere else on a rank's critical path.
The run page's records are sent by their own modules, also only in the sender:
:mod:`jobs.tracking.dataset_inputs`, :mod:`jobs.tracking.model_registry` and :mod:`jobs.tracking.run_page`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from jobs.tracking.dataset_inputs import send_dataset
from jobs.tracking.mlflow_errors import describe, is_permanent
from jobs.tracking.model_registry import log_trained_model
from jobs.tracking.run_page import publish_run_page
from jobs.tracking.store_uri import SQLITE_PREFIX, local_store_path

log = logging.getLogger("jobs.tracking.tracker")

PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
T = TypeVar("T")
def new_client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    create_store_whole(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def create_store_whole(tracking_uri: str) -> None:
    """A new sqlite store appears with all its tables or not at all.

    MLflow creates a new store's tables in place, over seconds of schema migrations whose DDL
    sqlite does not roll back: a process killed meanwhile (a job cancelled as it starts, a
    sender stopped) leaves a file that no later process can open. So a store that does not
    exist yet is created in a private file beside it and linked into place; where another
    process got there first, its store stays and this copy is dropped.
    """
    from mlflow import MlflowClient

    path = local_store_path(tracking_uri) if tracking_uri.startswith(SQLITE_PREFIX) else None
    if path is None or path.exists() or path.name in ("", ":memory:"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.creating-{socket.gethostname()}-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):  # a killed creator's copy, on this host
        pid = stale.name[len(prefix):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{prefix}{os.getpid()}")
    try:
        client = MlflowClient(tracking_uri=f"{SQLITE_PREFIX}{tmp}")
        with contextlib.suppress(Exception):  # close its connections: the file is complete once created
            client._tracking_client.store.engine.dispose()
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it meanwhile
    except Exception as exc:  # noqa: BLE001 - no hard links (some network file systems), or the copy failed:
        # MLflow creates the store in place, and says what is wrong with the real path if that fails too
        log.debug("tracking: could not create a new store beside %s (%s)", path, describe(exc))
    finally:
        tmp.unlink(missing_ok=True)


def send_records(client: Any, run_id: str, group: list[dict[str, Any]], artifact_source: Path | None,
                 tracking_uri: str = "") -> None:
    """Send one record, or a run of metrics records as one batch.

    ``artifact_source`` is the file to upload for an artifact record (the spool's copy or
    the original). The run page's records (``dataset``, ``model``, ``run_page``) go to
    their own modules. Raises what MLflow raises; see :func:`is_permanent`.
    """
    from mlflow.entities import Metric, Param, RunTag

    record = group[0]
    kind = record["kind"]
    if kind == "metrics":
        metrics = [Metric(key, value, r["timestamp"], r["step"]) for r in group for key, value in r["metrics"].items()]
        for chunk in chunks(metrics, METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
    elif kind == "params":
        send_params(client, run_id, [Param(k, v) for k, v in record["params"].items()])
    elif kind == "tags":
        for chunk in chunks([RunTag(k, v) for k, v in record["tags"].items()], PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=chunk)
    elif kind == "artifact":
        if artifact_source is None or not artifact_source.exists():
            log.warning("tracking: artifact %s is gone; skipped it", record["src"])
            return
        client.log_artifact(run_id, str(artifact_source), record.get("artifact_path"))
    elif kind == "start":
        client.update_run(run_id, status="RUNNING")
    elif kind == "end":
        client.set_terminated(run_id, status=record["status"])
    elif kind == "dataset":
        send_dataset(client, run_id, record)
    elif kind == "model":
        log_trained_model(client, run_id, tracking_uri, record)
    elif kind == "run_page":
        publish_run_page(client, run_id, record)
    elif kind == "phases_chart":
        send_phases_chart(client, run_id, record)


def send_phases_chart(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Draw the launcher's phases chart here (this process has matplotlib loaded) and upload it.

    A chart that cannot be drawn is skipped with a warning; raises what MLflow raises.
    """
    with tempfile.TemporaryDirectory(prefix="podrun-phases-") as folder:
        try:
            from jobs.tracking.run_charts import stacked_phases

            rows = [(str(label), dict(phases)) for label, phases in record["rows"]]
            png = stacked_phases(rows, Path(folder) / "phases.png", record["title"])
        except Exception as exc:  # noqa: BLE001 - a chart is not worth a stuck spool
            log.warning("tracking: phases chart not drawn (%s: %s)", type(exc).__name__, exc)
            return
        client.log_artifact(run_id, str(png), record.get("artifact_path"))


def send_params(client: Any, run_id: str, params: list[Any], size: int = PARAMS_PER_BATCH) -> None:
    """Batches of 100; a rejected batch (a changed value on a resumed run) goes one by one."""
    for chunk in chunks(params, size):
        try:
            client.log_batch(run_id, params=chunk)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if size > 1:
                send_params(client, run_id, chunk, size=1)
            else:
                log.warning("tracking: MLflow rejected param %r (%s)", chunk[0].key, describe(exc))


def find_run(client: Any, run_id: str, tracking_uri: str) -> str | None:
    """The experiment id of ``run_id``, or None when the store has no such run (it is re-created)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.experiment_id
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("tracking: run %s does not exist at %s; starting a new run", run_id, tracking_uri)
        return None


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (or restored) if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
        except MlflowException as exc:  # another job created it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def artifact_location(tracking_uri: str) -> str | None:
    """For ``sqlite:///<db>``: ``<db dir>/mlartifacts`` as a file URI, not a cwd-relative path."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None  # a server chooses its own (proxied) artifact store
    db_file = local_store_path(tracking_uri)
    return (db_file.resolve().parent / "mlartifacts").as_uri()


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
