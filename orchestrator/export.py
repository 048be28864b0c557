"""``podrun export RUN_ID --format onnx``: the run's registered model as ONNX, checked, logged back.

The start of the inference path to NVIDIA T4s (TensorRT): the model that a run logged
(:mod:`jobs.tracking.model_registry`, MLflow ``pt2``) is loaded from MLflow and exported with
``torch.onnx.export`` (the dynamo exporter, opset 18, dynamic batch). ONNX Runtime on the
CPU must then reproduce torch's outputs on the run's validation batch within
``|onnx - torch| <= ATOL + RTOL * |torch|``; only then is the file logged to the same run
under ``onnx/``, with the check's figures in the ``podrun.onnx`` tag.

Imported only by ``podrun export`` (it imports torch). The task says which graphs to write
(:meth:`jobs.tasks.base.Task.onnx_graphs`): ResNet one, ``images [batch, 3, H, W] ->
logits``; the Transformer two, its encoder and one decoder step.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.errors import PodrunError

OPSET = 18
ATOL, RTOL = 1e-4, 1e-3
ONNX_TAG = "podrun.onnx"


class ExportError(PodrunError):
    """The run has no model, or the ONNX file does not match torch."""


def require_onnx() -> None:
    """Raises :class:`ExportError` (one line: how to install them) when the ONNX packages are missing."""
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"podrun export needs {', '.join(missing)}: pip install 'podrun[export]'")


def trtexec_line(onnx_file: Path, input_name: str, shape: tuple[int, ...]) -> str:
    """The ``trtexec`` command that builds a TensorRT engine (FP16, batch 1 to 128) from an exported image model."""
    dims = "x".join(str(d) for d in shape[1:])
    return (f"trtexec --onnx={onnx_file} --saveEngine={onnx_file.with_suffix('.plan')} --fp16 "
            f"--minShapes={input_name}:1x{dims} --optShapes={input_name}:32x{dims} "
            f"--maxShapes={input_name}:128x{dims}")


def find_tracking_uri(run_id: str, explicit: str | None) -> str:
    """``--tracking-uri``, else the store of the podrun job that made ``run_id``, else ``$MLFLOW_TRACKING_URI``."""
    import os

    from jobs.contract.checkpoint_index import read_run_info
    from orchestrator.spec.jobstore import list_records
    from orchestrator.spec.paths import podrun_home

    if explicit:
        return explicit
    for record in list_records(podrun_home()):
        if read_run_info(Path(record.checkpoint_dir)).get("mlflow_run_id") == run_id:
            return record.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    raise ExportError(f"no podrun job under {podrun_home()} made MLflow run {run_id}: "
                      "pass --tracking-uri (or set MLFLOW_TRACKING_URI)")


def export_onnx(run_id: str, tracking_uri: str, output: Path) -> list[str]:
    """Export the run's model to ONNX files in ``output``, check them and log them; return report lines.

    Raises:
        ExportError: the run does not exist or has no logged model, or ONNX Runtime disagrees with torch;
            or the ONNX packages are not installed.
    """
    require_onnx()
    import mlflow
    from mlflow.exceptions import MlflowException

    from jobs.tracking.model_inputs import load_validation_batch
    from jobs.tracking.model_registry import MODEL_TAG, MODEL_URI_TAG, task_of

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ExportError(f"MLflow run {run_id} not found at {tracking_uri} ({exc.error_code})") from None
    model_uri = run.data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        why = run.data.tags.get(MODEL_TAG, "the target was not reached, or registry: false")
        raise ExportError(f"run {run_id} has no logged model ({why})")
    with tempfile.TemporaryDirectory(prefix="podrun-export-") as tmp:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
            meta = mlflow.models.Model.load(str(folder / "MLmodel")).metadata["podrun"]
        except (MlflowException, OSError, KeyError, TypeError) as exc:
            raise ExportError(f"cannot load {model_uri} of run {run_id}: {str(exc).splitlines()[0][:200]}") from None
        task = task_of(meta)
        inputs = load_validation_batch(folder / "extra_files" / "model-inputs.npz", task.input_names)
        files, checks = _export(folder, task, meta, inputs, run.data.params.get("recipe", "model"), output)
    for path in files:
        client.log_artifact(run_id, str(path), "onnx")
    worst = max(diff for _, diff, _ in checks)
    client.set_tag(run_id, ONNX_TAG, f"{', '.join(p.name for p in files)}: opset {OPSET}, dynamic batch, "
                                     f"max |onnx - torch| {worst:.2e} (atol {ATOL:g}, rtol {RTOL:g})")
    lines = [f"{path}: max |onnx - torch| {diff:.2e} on {rows} validation rows" for path, diff, rows in checks]
    if len(files) == 1 and len(inputs) == 1 and inputs[0].dtype == np.float32:  # one image-like input
        trt = trtexec_line(files[0], task.input_names[0], inputs[0].shape)
        lines.append(f"TensorRT (FP16 engine, on the GPU machine): {trt}")
    return lines


def _export(folder: Path, task: Any, meta: dict[str, Any], inputs: tuple[np.ndarray, ...], name: str,
            output: Path) -> tuple[list[Path], list]:
    """Write and check each ONNX graph the task names; return the files and ``(file, max diff, rows)``."""
    program = torch.export.load(str(folder / "data" / "model.pt2"))
    model = task.model_from_weights(meta["model_config"], dict(program.state_dict))
    output.mkdir(parents=True, exist_ok=True)
    files, checks = [], []
    for graph in task.onnx_graphs(model, inputs, meta["model_config"]):
        path = output / f"{name}{graph.suffix}.onnx"
        with torch.no_grad():
            expected = graph.module(*graph.args)
        torch.onnx.export(graph.module, graph.args, str(path), dynamo=True, opset_version=OPSET,
                          dynamic_shapes=graph.dynamic_shapes, input_names=graph.input_names,
                          output_names=graph.output_names)
        files.append(path)
        checks.append((path, _check(path, graph.feeds, expected.detach().numpy()), len(inputs[0])))
    return files, checks


def _check(path: Path, feeds: dict[str, Any], expected: Any) -> float:
    """Run ``path`` in ONNX Runtime (CPU); return the largest difference to ``expected``.

    Raises:
        ExportError: a value differs by more than ``ATOL + RTOL * |expected|``.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    diff = float(np.abs(got - expected).max())
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
        raise ExportError(f"{path.name}: ONNX Runtime differs from torch (max {diff:.2e}, shapes {got.shape} "
                          f"vs {expected.shape}); the file is kept in {path.parent} but not logged")
    return diff
