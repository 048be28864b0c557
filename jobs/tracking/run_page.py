"""The run's page in the MLflow UI: a markdown description and charts, written when the run ends.

Rank 0 queues a ``run_page`` record last, after ``run_stop`` (:func:`run_page_record`). The
sender (:func:`publish_run_page`) reads the run back from MLflow, so everything that
reached the run counts, across resumed attempts and whoever logged it (the time-to-train
phases ``phase_*_s``, the model's fate in ``podrun.model``), then sets:

- the description (tag ``mlflow.note.content``, :func:`describe`): recipe, preset,
  profile, scale, global batch and LR; the result against the target; time-to-train, mean
  throughput and phases; restarts, git SHA and the ``podrun`` command that reproduces it;
- ``podrun.result``, the result in one line (a column of the runs table);
- PNG charts under ``charts/`` (:mod:`jobs.tracking.run_charts`);
- the experiment's primary metric (``mlflow.experiment.primaryMetric.name``).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.job import ResolvedJob

log = logging.getLogger("jobs.tracking.tracker")

NOTE_TAG = "mlflow.note.content"  # mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE
RESULT_TAG = "podrun.result"
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
PHASE = re.compile(r"^phase_(.+)_s$")


def run_page_record(job: ResolvedJob, code: int) -> dict[str, Any]:
    """The ``run_page`` record rank 0 queues when the run (or this attempt) ends with exit code ``code``.

    The task says what its metric is called and which way is better (:class:`jobs.tasks.base.Task`).
    """
    task = job.recipe.task_class()
    return {"kind": "run_page", "metric": task.metric, "label": task.metric_label, "digits": task.metric_digits,
            "higher_is_better": task.higher_is_better, "unit": task.unit, "target": job.recipe.eval.target,
            "code": code, "command": job.command}


# --------------------------------------------------------------------------- the description


def _number(value: float, digits: int = 3) -> str:
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def result_line(record: dict[str, Any], evals: list[tuple[int, float]], metrics: dict[str, float]) -> str:
    """``reached top-1 0.931 >= 0.9 at epoch 5``, or what happened instead (``record``: a ``run_page`` record)."""
    label, digits = record.get("label", record["metric"]), record.get("digits", 3)
    target, code, higher = record["target"], record["code"], record.get("higher_is_better", True)
    compare = ">=" if higher else "<="
    reached = next(((epoch, value) for epoch, value in evals if (value >= target if higher else value <= target)),
                   None)
    if code == exit_codes.SUCCESS and reached:
        return f"reached {label} {reached[1]:.{digits}f} {compare} {target:g} at epoch {reached[0]}"
    values = [value for _, value in evals]
    best = (max(values) if higher else min(values)) if values else metrics.get("best_metric", 0.0)
    epochs = int(metrics.get("epochs_run", evals[-1][0] if evals else 0))
    if code == exit_codes.NOT_REACHED:
        return f"did not reach {label} {target:g}: best {best:.{digits}f} in {epochs} epochs"
    what = "stopped on a signal (resume with --resume)" if code == exit_codes.PREEMPTED else "failed"
    return f"{what} after {epochs} epochs: best {label} {best:.{digits}f} (target {target:g})"


def _count(value: str, word: str) -> str:
    return f"{value} {word}" + ("" if value == "1" else "s")


def _scale(params: dict[str, str]) -> str:
    kind = "GPU" if params.get("device") == "cuda" else "CPU rank"
    return (f"{_count(params.get('nodes', '?'), 'node')} x {_count(params.get('tasks_per_node', '?'), kind)} = "
            f"{_count(params.get('world_size', '?'), 'rank')}, {params.get('comm', 'ddp')}")


def _restarts(tags: dict[str, str], metrics: dict[str, float]) -> str:
    attempts = int(tags.get("attempts", "1") or 1)
    text = f"{_count(str(attempts - 1), 'restart')} ({_count(str(attempts), 'attempt')})"
    if "slurm_restart_count" in tags:
        text += f", Slurm requeues {tags['slurm_restart_count']}"
    lost = metrics.get("time_lost_s", 0.0)
    return text + (f", time lost {_number(lost, 1)} s" if lost else "")


def describe(params: dict[str, str], metrics: dict[str, float], tags: dict[str, str],
             evals: list[tuple[int, float]], record: dict[str, Any], datasets: list[str] | None = None) -> str:
    """The run's markdown description (pure: everything comes from the arguments)."""
    unit = record["unit"]
    result = result_line(record, evals, metrics)
    ttt = metrics.get("time_to_train_s")
    throughput = metrics.get(f"mean_throughput_{unit}_per_s")
    headline = f"**{result}**"
    if ttt is not None:
        headline += f" · time to train **{_number(ttt, 1)} s**"
    preset = f" (preset {params['preset']})" if params.get("preset") else ""
    rows = [
        ("recipe", f"{params.get('recipe', '?')}{preset}"),
        ("profile", f"{params.get('cluster', '?')} (backend {params.get('backend', '?')})"),
        ("scale", _scale(params)),
        ("global batch / LR", f"{params.get('global_batch_size', '?')} / {params.get('lr', '?')} "
                              f"({params.get('optimizer', '?')}, {params.get('precision', '?')})"),
        ("time to train", f"{_number(ttt, 1)} s (MLPerf run_start to run_stop)" if ttt is not None else "-"),
        ("mean throughput", f"{_number(throughput, 0)} {unit}/s" if throughput is not None else "-"),
    ]
    phases = sorted((PHASE.match(key).group(1), value) for key, value in metrics.items() if PHASE.match(key))
    if phases:
        rows.append(("phases", " · ".join(f"{name} {_number(value, 1)} s" for name, value in phases)))
    if datasets:
        rows.append(("data", "<br>".join(datasets)))
    rows += [("restarts", _restarts(tags, metrics)), ("model", tags.get("podrun.model", "-")),
             ("git", tags.get("git_sha", "unknown")), ("job", tags.get("job_id", "-"))]
    table = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    lines = [headline, "", *table]
    if record.get("command"):
        lines += ["", "Reproduce:", "", "```", record["command"], "```"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sending


def _dataset_lines(run: Any) -> list[str]:
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    lines = []
    for entry in inputs:
        context = next((tag.value for tag in entry.tags if tag.key == "mlflow.data.context"), "")
        lines.append(f"{entry.dataset.name} ({context}, digest {entry.dataset.digest})")
    return lines


def publish_run_page(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Write the description, the result tag and the charts of ``run_id``.

    Charts that cannot be drawn are skipped with a warning. Raises what MLflow raises
    (the sender keeps the record and retries).
    """
    run = client.get_run(run_id)
    metric, unit = record["metric"], record["unit"]
    history = {key: [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]
               for key in (f"eval_{metric}", f"throughput_{unit}_per_s", "train_loss")}
    evals = [(step, value) for step, _, value in history[f"eval_{metric}"]]
    data = run.data
    text = describe(data.params, data.metrics, data.tags, evals, record, _dataset_lines(run))
    with tempfile.TemporaryDirectory(prefix="podrun-charts-") as folder:
        for path in _charts(Path(folder), history, run.info.start_time, record):
            client.log_artifact(run_id, str(path), "charts")
    client.set_tag(run_id, RESULT_TAG, result_line(record, evals, data.metrics))
    client.set_tag(run_id, NOTE_TAG, text)
    client.set_experiment_tag(run.info.experiment_id, PRIMARY_METRIC_TAG, f"eval_{metric}")


def _charts(folder: Path, history: dict[str, list[tuple[int, int, float]]], start_ms: int,
            record: dict[str, Any]) -> list[Path]:
    try:
        from jobs.tracking.run_charts import draw_charts

        return draw_charts(folder, history, start_ms, record)
    except Exception as exc:  # noqa: BLE001 - a chart is not worth a lost description
        log.warning("tracking: charts not drawn (%s: %s)", type(exc).__name__, exc)
        return []
