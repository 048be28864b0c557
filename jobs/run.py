"""The per-rank entrypoint: ``python -m jobs.run CONFIG`` (a resolved job config).

Every backend starts this module, once per rank; only how the rank environment is set
differs (see :mod:`jobs.dist`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from jobs import status
from orchestrator.config import ResolvedJob, read_yaml, validate
from orchestrator.errors import PodrunError


def load_resolved(path: Path) -> ResolvedJob:
    """Read the launcher's resolved config.

    Raises:
        ConfigError: the file is missing or does not match this version of podrun.
    """
    return validate(ResolvedJob, read_yaml(path), str(path))


def write_resolved(job: ResolvedJob, path: Path) -> None:
    """Write a resolved config that :func:`load_resolved` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))


def apply_array_task(job: ResolvedJob, env: dict[str, str]) -> ResolvedJob:
    """Give each task of a Slurm job array (repeated runs, MLPerf's NEXP) its own seed and folders."""
    task = env.get("SLURM_ARRAY_TASK_ID")
    if not task:
        return job
    job = job.model_copy(deep=True)
    job.recipe.train.seed += int(task)
    job.checkpoint_dir = str(Path(job.checkpoint_dir) / f"array-{task}")
    job.job_dir = str(Path(job.job_dir) / f"array-{task}")
    return job


def run_rank(job: ResolvedJob, hooks: Any = None, resume_from: Path | None = None) -> int:
    """Set up this rank's device and process group, then train.

    ``hooks`` and ``resume_from`` let a backend (Ray Train) see checkpoints and pick the
    one to resume from; see :class:`jobs.train.Trainer`.
    """
    import torch
    import torch.distributed as dist

    from jobs.dist import barrier, detect_rank_env, init_distributed, init_horovod
    from jobs.train import Trainer

    horovod = job.job.comm == "horovod"
    info = init_horovod(horovod_settings(job)) if horovod else detect_rank_env()
    job = apply_array_task(job, dict(os.environ))
    print(f"[rank {info.rank}/{info.world_size}] pid {os.getpid()} on {socket.gethostname()}", flush=True)
    if job.device == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        threads = job.recipe.train.cpu_threads or max(1, (os.cpu_count() or 1) // job.tasks_per_node)
        torch.set_num_threads(threads)
    owns_group = not horovod and not dist.is_initialized()
    if not horovod:
        init_distributed(info, device)
    try:
        code = Trainer(job, info, device, hooks=hooks, resume_from=resume_from).run()
        # Leave together: under srun --kill-on-bad-exit a rank that exits first (code 3 after a
        # preemption checkpoint) would get the others killed while rank 0 still talks to MLflow.
        barrier()
        return code
    finally:
        if owns_group:
            dist.destroy_process_group()


def horovod_settings(job: ResolvedJob) -> dict[str, str]:
    """The job's Horovod options as the environment ``hvd.init()`` reads."""
    cfg = job.job.horovod
    env = {"HOROVOD_FUSION_THRESHOLD": str(cfg.fusion_threshold_mb * 1024 * 1024),
           "HOROVOD_CYCLE_TIME": str(cfg.cycle_time_ms)}
    if cfg.hierarchical_allreduce:
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1"
    if cfg.timeline:
        env["HOROVOD_TIMELINE"] = str(Path(job.job_dir) / "horovod-timeline.json")
    return env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobs.run CONFIG  (a config.resolved.yaml written by podrun)", file=sys.stderr)
        return status.FAILED
    try:
        code = run_rank(load_resolved(Path(args[0])))
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return status.FAILED
    # horovodrun stops every rank when one exits non-zero: report "not reached" or "preempted"
    # through outcome.json instead (the local backend reads it).
    if os.environ.get("PODRUN_EXIT_ZERO") and code != status.FAILED:
        return status.SUCCESS
    return code


if __name__ == "__main__":
    sys.exit(main())
