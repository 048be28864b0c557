"""What rank 0 records in MLflow for a job: params, tags, metrics and artifacts.

One job is one MLflow run: its id is kept in the checkpoint folder (``run.json``), so a
resumed or requeued job continues the same run and time-to-train stays honest.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract import metrics as names
from jobs.contract.checkpoint_index import latest_checkpoint, read_run_info, update_run_info
from jobs.contract.job import ResolvedJob
from jobs.contract.placement import RankInfo
from jobs.preflight.record import log_preflight
from jobs.rank.phases import phase_metrics
from jobs.rank.state import LoopState
from jobs.tracking import system_metrics
from jobs.tracking.dataset_inputs import dataset_records
from jobs.tracking.model_registry import model_record
from jobs.tracking.run_page import result_line, run_page_record
from jobs.tracking.spool import LAUNCHER_FILE
from jobs.tracking.store_uri import display_uri
from jobs.tracking.tracker import RELEASE_WAIT_S, SENDER_DRAIN_TIMEOUT_S, Tracker

RUN_STATUS = {exit_codes.SUCCESS: "FINISHED", exit_codes.NOT_REACHED: "FINISHED", exit_codes.PREEMPTED: "KILLED",
              exit_codes.REPLACE: "KILLED"}
STRAGGLERS_TAG = "podrun.stragglers"  # the ranks the straggler check named (jobs.rank.stragglers)
# Distributions whose versions a run records, read from their metadata (importing Ray or
# DALI only to ask would cost seconds at every start).
DISTRIBUTIONS = {"dali": ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130"), "ray": ("ray",),
                 "horovod": ("horovod",), "mlflow": ("mlflow", "mlflow-skinny")}


def versions() -> dict[str, str]:
    """Versions of the stack, as MLflow tags."""
    import torch

    found = {"torch": torch.__version__, "python": platform.python_version()}
    found["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "n/a"
    for name, distributions in DISTRIBUTIONS.items():
        found[name] = _distribution_version(distributions)
    return found


def _distribution_version(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def job_params(job: ResolvedJob) -> dict[str, Any]:
    """The params every run carries: scale, batch, optimizer and how they were derived."""
    recipe, derived = job.recipe, job.derived
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "preset": job.preset or "",
        "cluster": job.cluster,
        "backend": job.backend,
        "nodes": job.nodes,
        "gpus_per_node": job.tasks_per_node if job.device == "cuda" else 0,
        "tasks_per_node": job.tasks_per_node,
        "world_size": job.world_size,
        "device": job.device,
        "batch_size": derived.batch_size,
        "global_batch_size": derived.global_batch_size,
        "lr": derived.lr,
        "warmup_epochs": derived.warmup_epochs,
        "optimizer": derived.optimizer,
        "momentum": recipe.optim.momentum,
        "weight_decay": recipe.optim.weight_decay,
        "epochs": recipe.train.epochs,
        "precision": recipe.train.precision,
        "memory_format": "channels_last" if recipe.train.channels_last else "contiguous",
        "compile": recipe.train.compile,
        "data_backend": getattr(recipe.data, "backend", None) or getattr(recipe.data, "kind", recipe.task),
        "image_size": getattr(recipe.data, "image_size", 0),
        "max_tokens": getattr(recipe.data, "max_tokens", 0),
        "comm": job.comm,
        "target": recipe.eval.target,
        "seed": recipe.train.seed,
        "scaling_rule": "; ".join(derived.notes),
    }


def restarts_in_allocation(job_dir: Path, env: Mapping[str, str]) -> dict[str, Any] | None:
    """What the Slurm batch script wrote when it started the ranks again inside its allocation (None: never)."""
    job_id = env.get("SLURM_JOB_ID")
    if env.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    if not job_id:
        return None
    try:
        found = json.loads((job_dir / f"restarts.{job_id}.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("restarts_in_allocation"), int) else None


def open_tracker(job: ResolvedJob) -> Tracker:
    """Rank 0's tracker, its sender process started; cheap to call (no torch, no MLflow here).

    The sender writes the run id into ``run.json`` beside the checkpoints, so a resumed job
    continues the same MLflow run.
    """
    run_info = read_run_info(Path(job.checkpoint_dir))
    print(f"[mlflow] the run goes to {display_uri(job.tracking_uri)} (experiment {job.experiment})", flush=True)
    # Only the local backend lets the sender outlive its rank (a Slurm step or a Ray worker ends with its processes).
    # Elsewhere the rank holds its device while it waits: on Slurm at most RELEASE_WAIT_S (the attached launcher or
    # `podrun sync` sends what is left), on Ray not at all (the job's driver always sends it once the workers are gone).
    local = job.backend == "local"
    return Tracker(job.tracking_uri, job.experiment, Path(job.job_dir) / "mlflow-spool",
                   run_id=run_info.get("mlflow_run_id"), run_name=job.name, background=True,
                   run_info_dir=Path(job.checkpoint_dir),
                   sender_args=system_metrics.sender_args(job) + (("--finish-here",) if local else ()),
                   release_wait_s=release_wait_s(job))


def release_wait_s(job: ResolvedJob) -> float:
    """How long rank 0 waits for its sender after the run's end, holding its device (see :class:`Tracker`).

    Local: not at all, the sender outlives the rank. Ray: not at all, the job's driver sends
    the rest once the workers are gone (not inside a Slurm allocation, where it leaves it).
    Slurm: at most ``RELEASE_WAIT_S`` while an attached ``podrun launch`` said it will send the
    rest after the allocation (its mark in the spool); a detached job's rank waits until its
    records up to the end are sent, so that its MLflow run is complete without ``podrun sync``.
    """
    if job.backend == "local":
        return SENDER_DRAIN_TIMEOUT_S
    if job.backend == "ray" and not os.environ.get("SLURM_JOB_ID"):
        return 0.0
    if (Path(job.job_dir) / "mlflow-spool" / LAUNCHER_FILE).is_file():
        return RELEASE_WAIT_S
    return SENDER_DRAIN_TIMEOUT_S


def log_hang_files(tracker: Tracker, folder: Path) -> int:
    """The watchdog's stacks and traces of one hang (``<job_dir>/hang/<event>/``) under ``hang/<event>/``.

    Returns how many files were queued (the sender uploads them; a file at a time, as MLflow
    logs a file, not a folder).
    """
    files = sorted(path for path in Path(folder).iterdir() if path.is_file() and not path.name.startswith("."))
    for path in files:
        tracker.log_artifact(path, f"hang/{Path(folder).name}")
    return len(files)


class RunTracking:
    """Rank 0's view of the job's MLflow run."""

    def __init__(self, job: ResolvedJob, info: RankInfo, resumed_from: str | None,
                 tracker: Tracker | None = None) -> None:
        self.job, self.info, self.resumed_from = job, info, resumed_from
        self.task = job.recipe.task_class()
        self.ckpt_dir, self.job_dir = Path(job.checkpoint_dir), Path(job.job_dir)
        self.run_info = read_run_info(self.ckpt_dir)
        self.tracker = tracker or open_tracker(job)

    def start(self, hosts: list[str], steps_per_epoch: int, train_samples: int, val_samples: int) -> None:
        self.tracker.yield_to_ranks()  # run_start: the sender's start-up work is behind it (or below the steps)
        attempts = self.run_info.get("attempts", []) + [self.job.job_id]
        self.run_info = update_run_info(self.ckpt_dir, attempts=attempts, tracking_uri=self.job.tracking_uri)
        if not self.resumed_from:
            self.tracker.log_params(job_params(self.job) | {"steps_per_epoch": steps_per_epoch,
                                                              "train_samples": train_samples,
                                                              "eval_samples": val_samples})
            # numbers, so that the runs table sorts them as numbers (params sort as text)
            self.tracker.log_metrics({"world_size": self.job.world_size,
                                      "global_batch_size": self.job.derived.global_batch_size}, step=0)
            for record in dataset_records(self.job):
                self.tracker.log_record(record)
        tags = {f"version.{k}": v for k, v in versions().items()}
        tags |= {"git_sha": self.job.git_sha, "hosts": ",".join(sorted(set(hosts))), "job_id": self.job.job_id,
                 "attempts": str(len(attempts)), "checkpoint_dir": str(self.ckpt_dir)}
        tags |= self.job.tags  # e.g. mlflow.parentRunId: this run is one scale of a sweep
        if self.resumed_from:
            tags["resumed_from"] = self.resumed_from
        if "SLURM_JOB_ID" in os.environ:
            tags |= {"slurm_job_id": os.environ["SLURM_JOB_ID"],
                     "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0")}
        restarts = restarts_in_allocation(self.job_dir, os.environ)
        if restarts:  # the batch script started the ranks again inside its allocation
            tags |= {"restarts_in_allocation": str(restarts["restarts_in_allocation"]),
                     "podrun.nodes_replaced": restarts.get("nodes_replaced") or "none"}
            self.tracker.log_metrics({"restarts_in_allocation": restarts["restarts_in_allocation"]}, step=len(attempts))
        self.tracker.set_tags(tags)
        log_preflight(self.tracker, self.job_dir, step=len(attempts))

    def step_metrics(self, step: int, loss: float, lr: float, rate: float) -> None:
        self.tracker.log_metrics({names.TRAIN_LOSS: loss, names.LR: lr, names.throughput(self.task.unit): rate},
                                 step=step)

    def stragglers(self, step: int, worst: float, named: str | None) -> None:
        """The slowest rank's ratio to the median (every compared window); the named ranks when they change."""
        self.tracker.log_metrics({names.STRAGGLER_RATIO: round(worst, 4)}, step=step)
        if named:
            self.tracker.set_tags({STRAGGLERS_TAG: named})

    def eval_metric(self, value: float, epoch: int) -> None:
        # also in the "result" section, which the MLflow UI charts first (sections sort before the rest)
        name = names.eval_metric(self.task.metric)
        self.tracker.log_metrics({name: value, names.RESULT_SECTION + name: value}, step=epoch)

    def finish(self, code: int, time_to_train: float, state: LoopState, mllog_path: Path,
               val_loader: Any = None) -> None:
        """Log the run's result and artifacts (all after ``run_stop``), end the run, then queue the model and run page.

        The rank waits only for the records up to the end; the model and the run page are sent
        once every rank has exited (:mod:`jobs.tracking.sender`), so the devices are not held
        while a model is exported: on the local backend by this rank's sender, which outlives
        it, elsewhere by the launcher, the Ray driver or ``podrun sync``.
        """
        metrics = {names.BEST_METRIC: state.best_metric, names.EPOCHS_RUN: state.epoch,
                   names.TIME_LOST: state.time_lost_s,
                   names.mean_throughput(self.task.unit): state.items / max(time_to_train, 1e-9)}
        if code == exit_codes.SUCCESS:
            metrics[names.TIME_TO_TRAIN] = metrics[names.RESULT_SECTION + names.TIME_TO_TRAIN] = time_to_train
        reached = float(code == exit_codes.SUCCESS)
        metrics[names.REACHED_TARGET] = metrics[names.RESULT_SECTION + names.REACHED_TARGET] = reached
        self.tracker.log_metrics(metrics, step=state.global_step)
        self.tracker.log_metrics(phase_metrics(state.phases), step=0)  # the launcher adds its own
        self.tracker.set_tags({"status": exit_codes.DESCRIPTIONS.get(code, "failed")})
        for name in ("config.resolved.yaml", "render.txt", "job.sbatch"):
            if (self.job_dir / name).is_file():
                self.tracker.log_artifact(self.job_dir / name)
        timeline = self.job_dir / "horovod-timeline.json"
        if timeline.is_file():
            self.tracker.log_artifact(timeline, "horovod")
        if Path(mllog_path).is_file():
            self.tracker.log_artifact(Path(mllog_path), "mlperf")
        after_release = []
        if code == exit_codes.SUCCESS and self.job.registry.enabled and val_loader is not None:
            after_release += self._model_record(state, metrics, val_loader, time_to_train)
        after_release.append(run_page_record(self.job, code))
        started = time.monotonic()
        self.tracker.release_wait_s = release_wait_s(self.job)  # an attached launcher may have come or gone
        sent = self.tracker.finish(RUN_STATUS.get(code, "FAILED"), tuple(after_release))
        later = ("the model and run page" if len(after_release) > 1 else "the run page") + " once the ranks have exited"
        if self.job.backend == "local":  # the sender outlives this rank and sends it all
            print(f"[mlflow] run ended: its last records and {later} go to MLflow from rank 0's sender", flush=True)
            return
        waited = time.monotonic() - started
        if sent:
            print(f"[mlflow] run recorded: the sender took {waited:.1f} s after the run ended "
                  f"(last records; {later}, from outside the allocation)", flush=True)
        elif release_wait_s(self.job) == 0.0:  # Ray: the driver always finishes
            print(f"[mlflow] run ended: its last records and {later} go to MLflow from the job's Ray driver "
                  "(rank 0 does not wait for them on Ray)", flush=True)
        else:
            print(f"[mlflow] records kept for a finisher: the sender had not sent the run's last records after "
                  f"{waited:.1f} s; they, {later}, go from outside the allocation (the attached podrun launch, "
                  f"or podrun sync {self.job.job_id})", flush=True)

    def _model_record(self, state: LoopState, metrics: dict[str, float], val_loader: Any, time_to_train: float
                      ) -> list[dict[str, Any]]:
        """Save a validation batch; the model record (logged and registered after the ranks exit), or none."""
        from jobs.tracking.model_inputs import save_validation_batch

        checkpoint = latest_checkpoint(self.ckpt_dir)
        inputs = save_validation_batch(self.task, val_loader, state.epoch, self.job_dir / "model-inputs.npz")
        if checkpoint is None or inputs is None:
            print("[mlflow] model not logged: no final checkpoint or no validation batch", flush=True)
            return []
        result = result_line(run_page_record(self.job, exit_codes.SUCCESS), state.evals, metrics)
        result += f"; time to train {time_to_train:.1f} s; run {self.tracker.run_id or '?'} (job {self.job.job_id})"
        return [model_record(self.job, checkpoint, inputs, result)]
