"""``podrun report RUN_OR_EXPERIMENT``: the scaling report of a sweep, built from MLflow alone.

The argument is a sweep's parent run id, or an experiment name (its latest sweep). Every
number comes from the runs in MLflow, so the report can be built on any machine that
reaches the tracking server. It holds:

* a table per scale: GPUs (ranks on CPU), global batch, LR, training throughput (the
  median of the logged ``throughput_*_per_s``), scaling efficiency against linear (per-rank
  throughput over the smallest scale's), epochs to the target, measured time to train
  (MLPerf's ``run_start`` to ``run_stop``) and the predicted one, and the phases;
* PNG plots: throughput against GPUs with the ideal line, time to train against GPUs
  (measured and predicted), the phases of each scale as stacked bars;
* a self-contained HTML page (images inlined) with both.

The prediction is :mod:`orchestrator.studies.predict_model` calibrated on the smallest scale's run
(its step time and evals), with the fabric the sweep recorded on the parent run; start-up
is left out, as in the measured time to train. Everything is logged as artifacts of the
parent run (``report/``), with the per-scale numbers as its metrics (step = GPUs).
"""

from __future__ import annotations

import base64
import html
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.tracking.run_charts import stacked_phases
from orchestrator.errors import PodrunError
from orchestrator.studies.plots import line_chart
from orchestrator.studies.predict import run_figures
from orchestrator.studies.predict_model import Fabric, Workload, calibrate, predict_scale
from orchestrator.studies.run_phases import RUN_PHASES

COLUMNS = ("scale", "GPUs", "global batch", "LR", "throughput", "efficiency", "epochs", "measured", "predicted")


@dataclass
class ScaleRow:
    label: str
    nodes: int
    world: int
    global_batch: int
    lr: float
    throughput: float
    epochs: float | None
    measured_s: float | None
    phases: dict[str, float]
    run: Any = None
    efficiency: float = 1.0
    predicted_s: float | None = None


@dataclass
class Report:
    parent_run_id: str
    rows: list[ScaleRow]
    unit: str
    text: str = ""
    html: str = ""
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def find_parent(client: Any, ref: str) -> Any:
    """The sweep's parent run: ``ref`` as a run id, else the latest sweep of experiment ``ref``.

    Raises:
        PodrunError: neither matches.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    experiment = client.get_experiment_by_name(ref)
    runs = client.search_runs([experiment.experiment_id], "tags.`podrun.kind` = 'sweep'", max_results=1,
                              order_by=["attributes.start_time DESC"]) if experiment else []
    if not runs:
        raise PodrunError(f"'{ref}' is neither a run id nor an experiment with a sweep in it; "
                          "give the parent run id that 'podrun sweep' printed")
    return runs[0]


def scale_rows(client: Any, parent: Any) -> tuple[list[ScaleRow], str]:
    """One row per child run (a scale), smallest first, and the throughput unit.

    Raises:
        PodrunError: the run has no children that logged throughput.
    """
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=500)
    rows, unit = [], "img"
    for run in children:
        metrics = run.data.metrics
        unit = "tok" if "throughput_tok_per_s" in metrics else unit
        history = client.get_metric_history(run.info.run_id, f"throughput_{unit}_per_s")
        if not history:
            continue
        params = run.data.params
        rows.append(ScaleRow(
            label=run.data.tags.get("podrun.scale", run.info.run_name), nodes=int(params["nodes"]),
            world=int(params["world_size"]), global_batch=int(params["global_batch_size"]), lr=float(params["lr"]),
            throughput=statistics.median(m.value for m in history),
            epochs=metrics.get("epochs_run") if metrics.get("reached_target") == 1.0 else None,
            measured_s=metrics.get("time_to_train_s"), run=run,
            phases={name: metrics[f"phase_{name}_s"] for name in RUN_PHASES if f"phase_{name}_s" in metrics}))
    if not rows:
        raise PodrunError(f"run {parent.info.run_id} has no scale runs with throughput yet (is it a sweep's parent?)")
    rows.sort(key=lambda row: (row.world, row.nodes))
    for row in rows:
        row.efficiency = (row.throughput / row.world) / (rows[0].throughput / rows[0].world)
    return rows, unit


def add_predictions(client: Any, parent: Any, rows: list[ScaleRow], unit: str, notes: list[str]) -> None:
    """Predicted time to train for each scale, calibrated on the smallest scale's run."""
    params = parent.data.params
    base = run_figures(client, rows[0].run, unit)
    if base is None or not base.items_per_epoch or not base.eval_items or not rows[0].epochs:
        notes.append("no prediction: the smallest scale did not reach its target")
        return
    fabric = Fabric(1, float(params.get("predict.nvlink_gbs", 5)) * 1e9, float(params.get("predict.network_gbs",
                    1.25)) * 1e9, float(params.get("predict.latency_us", 5)) * 1e-6)
    work = Workload(base.items_per_epoch, base.eval_items, float(params.get("predict.grad_bytes", 0)),
                    eval_every=int(params.get("predict.eval_every", 1)))
    floor = float(params.get("predict.step_floor_ms", 0)) / 1000
    cal = calibrate(base.per_gpu_batch, base.world, base.step_s, base.eval_s_per_eval, work,
                    replace(fabric, gpus_per_node=rows[0].world // rows[0].nodes), floor, 0.0, "smallest scale")
    for row in rows:
        found = predict_scale(row.nodes, row.world // row.nodes, row.global_batch, row.lr,
                              (rows[0].epochs, "smallest scale"), work, cal,
                              replace(fabric, gpus_per_node=row.world // row.nodes))
        row.predicted_s = found.time_s
    notes.append(f"predicted: calibrated on {rows[0].label} (run {rows[0].run.info.run_id[:8]}), its "
                 f"{rows[0].epochs:g} epochs at every scale, start-up left out as in the measured time to train")


def _cells(row: ScaleRow, unit: str) -> list[str]:
    seconds = lambda value: "-" if value is None else f"{value:.1f} s"  # noqa: E731
    return [row.label, str(row.world), str(row.global_batch), f"{row.lr:g}", f"{row.throughput:,.0f} {unit}/s",
            f"{row.efficiency:.0%}", "-" if row.epochs is None else f"{row.epochs:g}", seconds(row.measured_s),
            seconds(row.predicted_s)] + [f"{row.phases[name]:.1f}" if name in row.phases else "-"
                                         for name in RUN_PHASES]


def render_text(report: Report) -> str:
    head = [*COLUMNS, *RUN_PHASES]
    table = [head] + [_cells(row, report.unit) for row in report.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in table]
    return "\n".join([f"scaling report of sweep run {report.parent_run_id} (phases in seconds):", *lines,
                      *(f"note: {note}" for note in report.notes)])


def render_html(report: Report, images: dict[str, Path]) -> str:
    """The page: title, table and the plots as inline PNGs (no external file)."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in (*COLUMNS, *(f"{p} (s)" for p in RUN_PHASES)))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(row, report.unit)) + "</tr>"
                   for row in report.rows)
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                      f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(name)}</figcaption>'
                      "</figure>" for name, path in images.items())
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in report.notes)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Scaling report {report.parent_run_id}</title>"
            f"<style>{style}</style></head><body><h1>Scaling report</h1><p>sweep run {report.parent_run_id}, "
            f"built {time.strftime('%Y-%m-%d %H:%M')}</p><table id='scaling'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><ul>{notes}</ul>{figures}</body></html>")


def plot_report(report: Report, folder: Path) -> dict[str, Path]:
    rows, unit = report.rows, report.unit
    gpus = [row.world for row in rows]
    ideal = [rows[0].throughput * g / gpus[0] for g in gpus]
    plots = {"throughput": line_chart(folder / "throughput.png", "throughput against GPUs", "GPUs", f"{unit}/s",
                                      {"measured": (gpus, [r.throughput for r in rows], "o-"),
                                       "linear scaling": (gpus, ideal, "--")}, log_log=True)}
    series = {"measured": (gpus, [r.measured_s for r in rows], "o-"),
              "predicted": (gpus, [r.predicted_s for r in rows], "s--")}
    plots["time to train"] = line_chart(folder / "time_to_train.png", "time to train against GPUs", "GPUs",
                                        "seconds", {k: v for k, v in series.items() if None not in v[1]})
    plots["phases"] = stacked_phases([(row.label, row.phases) for row in rows], folder / "phases.png",
                                     "where each scale's wall time went")
    return plots


def build_report(tracking_uri: str, ref: str, out_dir: Path | None = None) -> Report:
    """Build the report of sweep ``ref`` and log it to the parent run's ``report/`` artifacts.

    Raises:
        PodrunError: no sweep run matches ``ref``, or it has no scale runs yet.
    """
    from orchestrator.studies.tracking_client import tracking_client

    client = tracking_client(tracking_uri)
    parent = find_parent(client, ref)
    rows, unit = scale_rows(client, parent)
    report = Report(parent.info.run_id, rows, unit)
    add_predictions(client, parent, rows, unit, report.notes)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out_dir or scratch)
        images = plot_report(report, folder)
        report.text = render_text(report)
        report.html = render_html(report, images)
        (folder / "report.html").write_text(report.html)
        (folder / "report.txt").write_text(report.text + "\n")
        report.files = [folder / "report.html", folder / "report.txt", *images.values()]
        for path in report.files:
            client.log_artifact(report.parent_run_id, str(path), "report")
    _log_numbers(client, report)
    report.text += f"\nreport: {parent.info.artifact_uri.rstrip('/')}/report/report.html"
    return report


def _log_numbers(client: Any, report: Report) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for row in report.rows:
        for key, value in (("throughput", row.throughput), ("scaling_efficiency", row.efficiency),
                           ("time_to_train_s", row.measured_s), ("predicted_time_to_train_s", row.predicted_s)):
            if value is not None:
                metrics.append(Metric(key, value, now, row.world))
    client.log_batch(report.parent_run_id, metrics=metrics)
