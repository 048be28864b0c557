"""The per-rank entrypoint: ``python -m jobs.run CONFIG`` (a resolved job config).

Every backend starts this module, once per rank; only how the rank environment is set
differs (see :mod:`jobs.rank.dist`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.errors import PodrunError
from jobs.contract.job import ResolvedJob, apply_array_task, apply_node_paths, load_resolved
from jobs.contract.placement import RankInfo, detect_rank_env, node_name
from jobs.contract.secret_filter import install_log_masking
from jobs.rank import checkpoint_lock


def run_rank(job: ResolvedJob, hooks: Any = None, resume_from: Path | None = None) -> int:
    """Set up this rank's device and process group, then train.

    ``hooks`` and ``resume_from`` let a backend (Ray Train) see checkpoints and pick the
    one to resume from; see :class:`jobs.train.Trainer`.

    Raises:
        CheckpointInUse: (rank 0) another job trains from the same checkpoint folder.
        CheckpointError: no checkpoint in the folder can be loaded.
        CheckpointWriteError: a checkpoint could not be written (a full disk).
    """
    os.umask(0o077)  # checkpoints, logs and the spool: readable by their owner only
    install_log_masking()
    job = apply_node_paths(apply_array_task(job, dict(os.environ)), node_name())
    early = detect_rank_env()
    # Rank 0 holds the checkpoint folder while it runs: a second job resuming it is refused.
    with checkpoint_lock.hold(Path(job.checkpoint_dir), job.job_id) if early.is_main else contextlib.nullcontext():
        return _tracked_rank(job, early, hooks, resume_from)


def _tracked_rank(job: ResolvedJob, early: RankInfo, hooks: Any, resume_from: Path | None) -> int:
    # Rank 0 starts its MLflow sender before importing torch, so MLflow's own start-up
    # (seconds of imports and store set-up, in another process) overlaps torch's.
    tracker = node_monitor = None
    if early.is_main:
        from jobs.tracking.run_tracking import open_tracker

        tracker = open_tracker(job)
    else:  # another node's local rank 0 logs that node's system metrics (rank 0's sender does node 0's)
        from jobs.tracking.system_metrics import spawn_node_monitor

        node_monitor = spawn_node_monitor(job, early)
    try:
        return _run_rank(job, hooks, resume_from, tracker)
    finally:
        if tracker is not None:
            tracker.close()  # after a crash: the sender sends what there is and stops
        if node_monitor is not None:
            node_monitor.close()


def _run_rank(job: ResolvedJob, hooks: Any, resume_from: Path | None, tracker: Any) -> int:
    import torch.distributed as dist

    from jobs.rank.dist import barrier, init_distributed, init_horovod
    from jobs.rank.phases import process_start_time
    from jobs.rank.rendezvous import step_file
    from jobs.rank.watchdog import process_group_timeout_s
    from jobs.train import Trainer

    horovod = job.comm == "horovod"
    info = init_horovod(horovod_settings(job)) if horovod else detect_rank_env()
    started = process_start_time()
    print(f"[rank {info.rank}/{info.world_size}] pid {os.getpid()} on {socket.gethostname()} "
          f"(process started {started:.3f}, imports {time.time() - started:.2f} s)", flush=True)
    device = rank_device(job, info)
    owns_group = not horovod and not dist.is_initialized()
    if not horovod:
        began = time.time()
        init_distributed(info, device, timeout_s=process_group_timeout_s(job.watchdog_timeout_s),
                         rendezvous_file=step_file(Path(job.job_dir), dict(os.environ)))
        if info.is_main:  # what start-up costs, for bench/launch_overhead.py
            print(f"[rank 0/{info.world_size}] process group up in {time.time() - began:.2f} s", flush=True)
    try:
        trainer = Trainer(job, info, device, hooks=hooks, resume_from=resume_from,
                          tracker=tracker if info.is_main else None)
        code = trainer.run()
        # Leave together: under srun --kill-on-bad-exit a rank that exits first (code 3 after a
        # preemption checkpoint) would get the others killed while rank 0 still talks to MLflow.
        barrier()
        return code
    finally:
        if owns_group:
            dist.destroy_process_group()


def rank_device(job: ResolvedJob, info: Any):
    """This rank's ``torch.device``: its local GPU (made current), or the CPU with its share of threads."""
    import torch

    if job.device == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        return device
    torch.set_num_threads(job.recipe.train.cpu_threads or max(1, (os.cpu_count() or 1) // job.tasks_per_node))
    return torch.device("cpu")


def horovod_settings(job: ResolvedJob) -> dict[str, str]:
    """The job's Horovod options as the environment ``hvd.init()`` reads."""
    cfg = job.horovod
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
        return exit_codes.FAILED
    try:
        code = run_rank(load_resolved(Path(args[0])))
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    # horovodrun stops every rank when one exits non-zero: report "not reached" or "preempted"
    # through outcome.json instead (the local backend reads it).
    if os.environ.get("PODRUN_EXIT_ZERO") and code != exit_codes.FAILED:
        return exit_codes.SUCCESS
    return code


def exit_now(code: int) -> None:
    """End the rank process at once: exit handlers run, the interpreter's teardown does not.

    With torch and podrun loaded, tearing the interpreter down (freeing every module) takes
    about 0.4 s after the run has ended, while the rank still holds its device. The exit
    handlers (logging's, which flushes the MLPerf log; multiprocessing's, which ends data
    loader workers) run first; every thread of the rank is a daemon.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
