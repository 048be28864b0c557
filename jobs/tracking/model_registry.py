"""The trained model in MLflow: logged with its signature and input example, and registered.

When a run reaches its target, rank 0 queues a ``model`` record (:func:`model_record`)
after ``run_stop``: the final checkpoint, a validation batch (:mod:`jobs.tracking.model_inputs`)
and the recipe's model config. The sender (:func:`log_trained_model`) rebuilds the model
from the checkpoint, logs it with ``mlflow.pytorch.log_model`` in MLflow 3's default
``pt2`` format (``torch.export``, batch and sequence dimensions dynamic), registers it
under the recipe's name and writes the run's result into the version's description. So
neither MLflow nor ``torch.export`` ever runs in a training process, and an outage only
delays it (``podrun sync`` sends the record later).

Weights larger than ``registry.max_model_mb`` are not uploaded: the run's ``podrun.model``
tag (and its description) says so and names the checkpoint instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.contract.job import ResolvedJob
from jobs.contract.recipe import TASK_OF_ARCH, load_task

log = logging.getLogger("jobs.tracking.tracker")

MODEL_TAG = "podrun.model"  # what became of the model: "registered resnet50 version 3 ..." or why not
MODEL_URI_TAG = "podrun.model_uri"  # models:/<id>, for `podrun export`
ARTIFACT_NAME = "model"


def model_record(job: ResolvedJob, checkpoint: Path, inputs: Path, result: str) -> dict[str, Any]:
    """The ``model`` record rank 0 queues when the target is reached."""
    return {"kind": "model", "checkpoint": str(checkpoint), "inputs": str(inputs), "task": job.recipe.task,
            "model_config": job.recipe.model.model_dump(mode="json"), "name": job.recipe.name,
            "max_model_mb": job.registry.max_model_mb, "result": result}


def task_ref(entry: dict[str, Any]) -> str:
    """The task of a ``model`` record (or an MLmodel's ``podrun`` metadata); older ones named the ``arch``."""
    return entry.get("task") or TASK_OF_ARCH[entry["arch"]]


def task_of(entry: dict[str, Any]) -> Any:
    """The task class of a ``model`` record or an MLmodel's ``podrun`` metadata."""
    return load_task(task_ref(entry))


def weights_mb(state_dict: dict[str, Any]) -> float:
    """The size of the weights (tensors of ``state_dict``) in MiB."""
    return sum(t.numel() * t.element_size() for t in state_dict.values() if hasattr(t, "numel")) / 2**20


def signature(task: Any, inputs: tuple[Any, ...], output: Any) -> Any:
    """The model signature: batch (or every) dimension dynamic (-1), so ``pt2`` exports them dynamic."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def dynamic(array: np.ndarray, name: str | None) -> TensorSpec:
        shape = (-1,) * array.ndim if task.dynamic_dims == "all" else (-1, *array.shape[1:])
        return TensorSpec(array.dtype, shape, name)

    specs = [dynamic(array, name) for name, array in zip(task.input_names, inputs)]
    return ModelSignature(Schema(specs), Schema([dynamic(output, None)]))


def prepare(record: dict[str, Any]) -> tuple[Any, tuple[Any, ...], Any] | str:
    """The model, its example inputs and signature; or a one-line reason not to log it."""
    import torch

    from jobs.rank.checkpoint import load_checkpoint
    from jobs.tracking.model_inputs import load_validation_batch

    checkpoint = Path(record["checkpoint"])
    if not checkpoint.is_file():
        return f"not logged: the checkpoint {checkpoint} is gone"
    state = load_checkpoint(checkpoint)["model"]
    size = weights_mb(state)
    if size > record["max_model_mb"]:
        return (f"not logged: its weights are {size:.1f} MB, more than registry.max_model_mb "
                f"{record['max_model_mb']:g} (raise it with --set registry.max_model_mb=N); "
                f"they stay in {checkpoint}")
    task = task_of(record)
    model = task.model_from_weights(record["model_config"], state)
    inputs = tuple(array[:2] for array in load_validation_batch(Path(record["inputs"]), task.input_names))
    with torch.no_grad():
        output = model(*(torch.from_numpy(array) for array in inputs)).numpy()
    return model, inputs, signature(task, inputs, output)


def log_trained_model(client: Any, run_id: str, tracking_uri: str, record: dict[str, Any]) -> None:
    """Log and register the model of a ``model`` record; a model that cannot be logged is skipped.

    Whatever happens, the run's ``podrun.model`` tag says what became of it.

    Raises:
        Exception: what MLflow raises when the server is unreachable (the sender retries).
    """
    from jobs.tracking.mlflow_errors import describe, is_transient

    try:
        prepared = prepare(record)
        if isinstance(prepared, str):
            _skip(client, run_id, prepared)
            return
        info = _log(client.get_run(run_id).info.experiment_id, run_id, tracking_uri, record, *prepared)
    except Exception as exc:
        if is_transient(exc):
            raise
        _skip(client, run_id, f"not logged: {describe(exc)}")
        return
    version = info.registered_model_version
    if version is not None:
        client.update_model_version(record["name"], str(version), description=record["result"])
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    where = f"registered as {record['name']} version {version}" if version is not None else "logged"
    client.set_tag(run_id, MODEL_TAG, f"{where} ({info.model_uri}, pt2)")


def _log(experiment_id: str, run_id: str, tracking_uri: str, record: dict[str, Any], model: Any,
         inputs: tuple[Any, ...], model_signature: Any) -> Any:
    import mlflow
    import torch

    # without the experiment the logged model would join the Default one (and its artifacts ./mlruns)
    with fluent_target(tracking_uri, experiment_id):
        return mlflow.pytorch.log_model(
            model, name=ARTIFACT_NAME, run_id=run_id, registered_model_name=record["name"],
            signature=model_signature, input_example=inputs if len(inputs) > 1 else inputs[0],
            extra_files=[record["inputs"]],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            metadata={"podrun": {"task": task_ref(record), "model_config": record["model_config"]}},
            validate_serving_input=False,  # `podrun export` checks the saved model against torch
        )


FLUENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def fluent_target(tracking_uri: str, experiment_id: str) -> Iterator[None]:
    """MLflow's fluent API aimed at one store and experiment, and put back as it was afterwards.

    ``mlflow.set_tracking_uri`` and ``mlflow.set_experiment`` also write ``MLFLOW_TRACKING_URI``
    and ``MLFLOW_EXPERIMENT_ID`` into ``os.environ``. The model is registered in long-lived
    processes too (``podrun launch`` after a Slurm job, a sweep, the Ray driver): left there,
    they would aim every later job and child process (a Ray cluster, an ``sbatch``) at this
    run's store.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    saved_env = {name: os.environ.get(name) for name in FLUENT_ENV}
    saved_uri, saved_experiment = utils._tracking_uri, fluent._active_experiment_id
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment_id=experiment_id)
        yield
    finally:
        utils._tracking_uri, fluent._active_experiment_id = saved_uri, saved_experiment
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _skip(client: Any, run_id: str, reason: str) -> None:
    log.warning("tracking: model %s", reason)
    client.set_tag(run_id, MODEL_TAG, reason)
