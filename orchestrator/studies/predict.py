"""``podrun predict JOB --nodes 1,2,4``: time-to-train and cost at each scale, before booking nodes.

The job scales by its recipe's own rule (:mod:`orchestrator.spec.scaling`): the per-GPU batch
stays and the global batch grows with the GPUs, as MLPerf submissions do. The model is
:mod:`orchestrator.studies.predict_model`; this module gathers its inputs:

* one GPU's rate: ``--throughput`` (items/s per GPU on one node), else the fastest MLflow
  run of the same recipe on the same profile, else the profile's ``throughput:`` table;
* epochs to converge: MLPerf's RCPs for ResNet-50 on ImageNet (:mod:`orchestrator.studies.rcp`),
  else the epochs a run of the recipe needed, else the recipe's ``train.epochs``;
* the fabric: the profile's ``interconnect:`` (``nvlink_gbs``, ``hcas`` x ``link_gbps``), and
  on GPUs the chunk NCCL's tree is charged per level between nodes (:data:`GPU_TREE_CHUNK_MIB`);
* the gradient size: the recipe's model, counted on PyTorch's meta device, in the comm dtype.

Every input that was assumed rather than given is named in the notes under the table.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.spec.jobspec import LaunchPlan
from orchestrator.spec.scaling import derive
from orchestrator.studies.predict_model import (
    Algorithm,
    Calibration,
    Fabric,
    Prediction,
    Workload,
    calibrate,
    predict_scale,
)
from orchestrator.studies.rcp import convergence_points, epochs_to_converge, rcp_round

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
GPU_STEP_FLOOR_MS = 5.0  # see docs/PREDICTION.md
GPU_TREE_CHUNK_MIB = 48.0  # the tree's chunk between nodes, fitted on all NVIDIA MLPerf rounds (docs/PREDICTION.md)
DEFAULT_NVLINK_GBS = {"cuda": 150.0, "cpu": 5.0}  # assumed when the profile does not say (noted)
DEFAULT_NETWORK_GBPS = 10.0  # one 10 GbE port, likewise


@dataclass
class RunFigures:
    """What a finished MLflow run of the recipe measured."""

    run_id: str
    world: int
    per_gpu_batch: float
    step_s: float
    eval_s_per_eval: float | None = None
    epochs: float | None = None
    items_per_epoch: int | None = None
    eval_items: int | None = None
    startup_s: float = 0.0


@dataclass
class Forecast:
    predictions: list[Prediction]
    calibration: Calibration
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- inputs


def fabric_for(plan: LaunchPlan, notes: list[str]) -> Fabric:
    """The profile's NVLink and HCA bandwidths (assumed defaults are noted); on GPUs, the tree's chunk."""
    net = plan.profile.interconnect
    nvlink = net.nvlink_gbs
    if nvlink is None:
        nvlink = DEFAULT_NVLINK_GBS[plan.job.device]
        notes.append(f"profile {plan.profile.name} has no interconnect.nvlink_gbs: assumed {nvlink:g} GB/s")
    network = len(net.hcas) * net.link_gbps / 8 if net.hcas and net.link_gbps else None
    if network is None:
        network = DEFAULT_NETWORK_GBPS / 8
        notes.append(f"profile {plan.profile.name} has no interconnect.hcas x link_gbps: assumed one "
                     f"{DEFAULT_NETWORK_GBPS:g} Gb/s link per node")
    chunk = GPU_TREE_CHUNK_MIB if plan.job.device == "cuda" else 0.0
    if chunk:
        notes.append(f"the allreduce's tree between nodes forwards {chunk:g} MiB per level, as fitted on MLPerf's "
                     "published results (docs/PREDICTION.md)")
    return Fabric(plan.job.tasks_per_node, nvlink * 1e9, network * 1e9, net.latency_us * 1e-6, chunk * 1024**2)


def model_parameters(plan: LaunchPlan) -> int:
    """The recipe's parameter count, from its model built on the meta device (no memory, no data)."""
    import torch

    with torch.device("meta"):
        model = plan.recipe.task_class().model_for(plan.recipe)
    return sum(parameter.numel() for parameter in model.parameters())


def comm_bytes(plan: LaunchPlan) -> int:
    """Bytes per gradient value on the wire: 2 with Horovod's fp16 compression, else 4 (DDP reduces fp32)."""
    return 2 if plan.job.comm == "horovod" and plan.job.horovod.fp16_compression else 4


def best_run(plan: LaunchPlan, notes: list[str]) -> RunFigures | None:
    """The fastest finished MLflow run of this recipe on this profile (per GPU), or None (also when unreachable)."""
    from jobs.tracking.mlflow_errors import describe

    try:
        return _best_run(plan)
    except Exception as exc:  # noqa: BLE001 - the prediction goes on from the other sources
        notes.append(f"MLflow at {plan.tracking_uri} not consulted ({describe(exc)[:80]})")
        return None


def _best_run(plan: LaunchPlan) -> RunFigures | None:
    from orchestrator.studies.tracking_client import tracking_client

    client = tracking_client(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.job.experiment)
    if experiment is None:
        return None
    query = f"params.recipe = '{plan.recipe.name}' and params.cluster = '{plan.profile.name}'"
    unit = _unit(plan)
    runs = [run for run in client.search_runs([experiment.experiment_id], query, max_results=200)
            if f"mean_throughput_{unit}_per_s" in run.data.metrics and run.data.params.get("world_size")]
    if not runs:
        return None
    run = max(runs, key=lambda r: r.data.metrics[f"mean_throughput_{unit}_per_s"] / int(r.data.params["world_size"]))
    return run_figures(client, run, unit)


def run_figures(client: Any, run: Any, unit: str) -> RunFigures | None:
    """What a run measured: its step time (median logged throughput), evals, epochs and epoch size."""
    params, metrics = run.data.params, run.data.metrics
    world = int(params["world_size"])
    rates = [m.value for m in client.get_metric_history(run.info.run_id, f"throughput_{unit}_per_s")]
    if not rates:
        return None
    per_gpu_batch = int(params["global_batch_size"]) / world
    found = RunFigures(run.info.run_id, world, per_gpu_batch, per_gpu_batch / (statistics.median(rates) / world),
                       startup_s=metrics.get("phase_startup_s", 0.0))
    evals = [key for key in metrics if key.startswith("eval_") and key != "eval_samples"]
    if evals and metrics.get("phase_eval_s"):
        found.eval_s_per_eval = metrics["phase_eval_s"] / len(client.get_metric_history(run.info.run_id, evals[0]))
    if metrics.get("reached_target") == 1.0 and metrics.get("epochs_run"):
        found.epochs = metrics["epochs_run"]
        found.items_per_epoch = round(metrics[f"mean_throughput_{unit}_per_s"] * metrics["time_to_train_s"]
                                      / metrics["epochs_run"])
    found.items_per_epoch = found.items_per_epoch or int(params.get("train_samples", 0)) or None
    found.eval_items = int(params.get("eval_samples", 0)) or None
    return found


def _unit(plan: LaunchPlan) -> str:
    return plan.recipe.task_class().unit


def _imagenet(plan: LaunchPlan) -> bool:
    """ResNet-50 on ImageNet, the MLPerf benchmark whose epoch size podrun knows."""
    return plan.recipe.mlperf.benchmark == "resnet" and Path(plan.job.data_dir).name == "imagenet"


def workload_for(plan: LaunchPlan, run: RunFigures | None, notes: list[str]) -> Workload:
    """Items per epoch and eval, gradient bytes and the eval cadence of the recipe.

    Raises:
        ConfigError: the epoch size is unknown (not ImageNet and no run to read it from).
    """
    if _imagenet(plan):
        items, eval_items = IMAGENET_TRAIN, IMAGENET_VAL
    elif run and run.items_per_epoch and run.eval_items:
        items, eval_items = run.items_per_epoch, run.eval_items
    else:
        raise ConfigError(f"how many items an epoch of {plan.recipe.name} ({plan.job.data_dir}) holds is unknown: "
                          "run the job once (its MLflow run tells), or predict an ImageNet recipe")
    grad = model_parameters(plan) * comm_bytes(plan)
    ev = plan.recipe.eval
    return Workload(items, eval_items, grad, eval_every=ev.every_epochs, eval_start=ev.start_epoch)


def epochs_for(plan: LaunchPlan, run: RunFigures | None, round_: str | None, notes: list[str]):
    """A function of the global batch giving (epochs to converge, where that comes from)."""
    if _imagenet(plan):
        chosen, note = rcp_round(round_)
        if note:
            notes.append(note)
        points = convergence_points(chosen)
        largest = points[-1].global_batch

        def from_rcp(batch: int) -> tuple[float, str]:
            if batch > largest:
                notes.append(f"global batch {batch} is past the largest RCP batch ({largest}): epochs extrapolated")
            return epochs_to_converge(batch, points), f"RCP {chosen}"

        return from_rcp
    if run and run.epochs:
        return lambda batch: (run.epochs, f"run {run.run_id[:8]}")
    notes.append(f"no run of {plan.recipe.name} reached its target yet: epochs are the recipe's train.epochs "
                 f"({plan.recipe.train.epochs}), an upper bound")
    return lambda batch: (float(plan.recipe.train.epochs), "recipe")


def calibration_for(plan: LaunchPlan, work: Workload, fabric: Fabric, run: RunFigures | None,
                    throughput: float | None, notes: list[str]) -> Calibration:
    """One GPU's rate: ``--throughput``, else the run, else the profile's table.

    Raises:
        ConfigError: none of the three is there.
    """
    entry = plan.profile.throughput.get(plan.recipe.name)
    gpu = plan.job.device == "cuda"
    floor_ms = entry.step_floor_ms if entry and entry.step_floor_ms is not None else (GPU_STEP_FLOOR_MS if gpu else 0)
    floor, per_gpu_batch = floor_ms / 1000, plan.derived.global_batch_size / plan.job.world_size
    one_node = fabric.gpus_per_node
    if throughput:
        return calibrate(per_gpu_batch, one_node, per_gpu_batch / throughput, None, work, fabric, floor,
                         entry.startup_s if entry else 0.0, "--throughput")
    if run is not None:
        return calibrate(run.per_gpu_batch, run.world, run.step_s, run.eval_s_per_eval, work, fabric, floor,
                         run.startup_s, f"MLflow run {run.run_id}")
    if entry is not None:
        batch = entry.batch or per_gpu_batch
        return calibrate(batch, one_node, batch / entry.per_gpu, None, work, fabric, floor, entry.startup_s,
                         f"profile {plan.profile.name} throughput.{plan.recipe.name}"
                         + (f" ({entry.source})" if entry.source else ""))
    raise ConfigError(f"no throughput for {plan.recipe.name} on profile {plan.profile.name}: pass --throughput "
                      f"ITEMS_PER_S (per GPU), run the job once, or add 'throughput: {{{plan.recipe.name}: N}}' "
                      "to the profile")


# --------------------------------------------------------------------------- forecast


def forecast(plan: LaunchPlan, nodes: list[int], throughput: float | None = None, round_: str | None = None,
             use_runs: bool = True, algorithm: Algorithm = "auto") -> Forecast:
    """Predictions for each node count (the job's tasks per node, its recipe's scaling rule).

    Raises:
        ConfigError: a needed input is missing (the message says which and how to give it).
    """
    notes: list[str] = []
    run = best_run(plan, notes) if use_runs and throughput is None else None
    fabric = fabric_for(plan, notes)
    work = workload_for(plan, run, notes)
    epochs = epochs_for(plan, run, round_, notes)
    cal = calibration_for(plan, work, fabric, run, throughput, notes)
    if cal.startup_s == 0:
        notes.append("start-up counted as 0 (no run measured it; set throughput.<recipe>.startup_s)")
    found = []
    for count in nodes:
        derived = derive(plan.recipe, count * plan.job.tasks_per_node)
        if count > plan.profile.nodes:
            notes.append(f"{count} nodes is more than profile {plan.profile.name} has ({plan.profile.nodes})")
        found.append(predict_scale(count, plan.job.tasks_per_node, derived.global_batch_size, derived.lr,
                                   epochs(derived.global_batch_size), work, cal, fabric, algorithm))
    return Forecast(found, cal, notes)


def format_forecast(result: Forecast, unit: str) -> str:
    """The table, then where its inputs came from."""
    head = (f"{'nodes':>5} {'GPUs':>5} {'batch':>7} {'LR':>7} {'epochs':>7} {unit + '/s':>11} {'allreduce':>9} "
            f"{'time-to-train':>14} {'GPU-hours':>9}")
    lines = [head]
    for p in result.predictions:
        lines.append(f"{p.nodes:>5} {p.gpus:>5} {p.global_batch:>7} {p.lr:>7.3f} {p.epochs:>7.1f} {p.rate:>11,.0f} "
                     f"{p.allreduce_share:>8.1%} {_duration(p.time_s):>14} {p.gpu_hours:>9.2f}")
    lines.append(f"one GPU: {result.calibration.rate:,.0f} {unit}/s past a {result.calibration.floor_s * 1000:g} ms "
                 f"step floor, from {result.calibration.source}; epochs: {result.predictions[0].epochs_from}")
    lines += [f"note: {note}" for note in dict.fromkeys(result.notes)]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def plot_forecast(result: Forecast, path: Path, title: str) -> Path:
    """Predicted time-to-train against GPUs (log-log), with the linear-scaling line from the first scale."""
    from orchestrator.studies.plots import line_chart

    gpus = [p.gpus for p in result.predictions]
    minutes = [p.time_s / 60 for p in result.predictions]
    ideal = [minutes[0] * gpus[0] / g for g in gpus]
    return line_chart(path, title, "GPUs", "time to train (min)",
                      {"predicted": (gpus, minutes, "o-"), "linear scaling": (gpus, ideal, "--")}, log_log=True)


def log_forecast(plan: LaunchPlan, result: Forecast, table: str, plot: Path) -> str:
    """An MLflow run (tag ``podrun.kind=prediction``) with the table and plot; returns its id."""
    import tempfile

    from mlflow.entities import Metric, Param, RunTag

    from jobs.tracking.mlflow_send import experiment_id
    from orchestrator.studies.tracking_client import tracking_client

    client = tracking_client(plan.tracking_uri)
    experiment = experiment_id(client, plan.job.experiment, plan.tracking_uri)
    run = client.create_run(experiment, run_name=f"predict-{plan.job.name}",
                            tags={"podrun.kind": "prediction", "podrun.job": plan.job.name})
    run_id = run.info.run_id
    params = {"recipe": plan.recipe.name, "cluster": plan.profile.name, "calibration": result.calibration.source,
              "epochs_from": result.predictions[0].epochs_from, "tasks_per_node": plan.job.tasks_per_node}
    now = int(time.time() * 1000)
    metrics = [Metric(f"predicted_{key}", value, now, p.nodes) for p in result.predictions
               for key, value in (("time_to_train_s", p.time_s), ("gpu_hours", p.gpu_hours), ("rate", p.rate),
                                  ("allreduce_share", p.allreduce_share), ("epochs", p.epochs))]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)[:500]) for k, v in params.items()],
                     tags=[RunTag("mlflow.note.content", f"```\n{table}\n```")])
    with tempfile.TemporaryDirectory() as folder:
        text = Path(folder) / "predict.txt"
        text.write_text(table + "\n")
        client.log_artifact(run_id, str(text), "prediction")
    client.log_artifact(run_id, str(plot), "prediction")
    client.set_terminated(run_id)
    return run_id


def parse_nodes(text: str, flag: str = "--nodes") -> list[int]:
    """``1,2,4`` as counts (of nodes, or of tasks per node).

    Raises:
        ConfigError: not a comma-separated list of positive integers.
    """
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"{flag} {text!r}: give counts like 1,2,4")
    return sorted(set(counts))

