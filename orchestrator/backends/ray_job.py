"""The driver of a Ray job: resolve the job, then run its ranks with Ray Train.

With Ray's own CLI (see the README for clusters with and without token auth)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m orchestrator.backends.ray_job recipes/jobs/resnet50-tiny.yaml --set cluster=ray

or through podrun: ``podrun launch JOB --backend ray`` (the plan then comes in
``$PODRUN_LAUNCH_PLAN``), and inside a Slurm allocation ``--plan PATH``. The driver starts
a ``TorchTrainer`` with ``nodes x tasks_per_node`` workers; each runs
:func:`jobs.ray_worker.worker_main`, the same per-rank code as every other backend.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from jobs.contract import exit_codes
from jobs.contract.config_io import read_yaml, validate
from orchestrator.backends.ray_runtime import PLAN_ENV
from orchestrator.errors import PodrunError
from orchestrator.preflight.ray_tasks import run_ray_preflight  # before ray.init(), which re-unpacks working_dir here
from orchestrator.spec.jobspec import LaunchPlan


def load_plan(argv: list[str]) -> LaunchPlan:
    """The plan to run: ``$PODRUN_LAUNCH_PLAN``, ``--plan PATH``, or a job reference + ``--set``.

    Raises:
        PodrunError: bad arguments, or the job does not resolve.
    """
    if os.environ.get(PLAN_ENV):
        return validate(LaunchPlan, yaml.safe_load(os.environ[PLAN_ENV]), f"${PLAN_ENV}")
    if argv[:1] == ["--plan"] and len(argv) == 2:
        return validate(LaunchPlan, read_yaml(Path(argv[1])), argv[1])
    from orchestrator.spec.resolve import load_job
    from orchestrator.spec.run_record import check_outlives

    if not argv:
        raise PodrunError("usage: python -m orchestrator.backends.ray_job JOB [--set KEY=VALUE ...]")
    ref, assignments, rest = argv[0], [], argv[1:]
    while rest:
        flag, value, rest = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
        if flag != "--set" or not value:
            raise PodrunError(f"unexpected argument {flag!r}: use --set KEY=VALUE")
        assignments.append(value)
    plan = load_job(ref, assignments, backend="ray")
    check_outlives(plan, Path.cwd())  # `ray job submit` runs this in Ray's temporary copy of the repo
    return plan


def fit_horovod(plan: LaunchPlan) -> int:
    """``comm: horovod`` on Ray: Horovod's own RayExecutor (Ray Train V2 has no HorovodTrainer).

    RayExecutor does not restart workers, so a failure ends the run; resume it with
    ``podrun launch ... --resume``.
    """
    from horovod.ray import RayExecutor

    from jobs.ray_worker import horovod_worker

    job = plan.job
    use_gpu = job.device == "cuda"
    # Several nodes: one placement bundle per host (Horovod's ColocatedStrategy, STRICT_SPREAD), so
    # the ranks land on their hosts as Ray Train's SPREAD puts them; one node: packed.
    placement = ({"num_hosts": job.nodes, "num_workers_per_host": job.tasks_per_node} if job.nodes > 1
                 else {"num_workers": job.world_size})
    executor = RayExecutor(RayExecutor.create_settings(timeout_s=600), **placement,
                           cpus_per_worker=1, use_gpu=use_gpu, gpus_per_worker=1 if use_gpu else None)
    executor.start()
    try:
        codes = executor.run(horovod_worker, kwargs={"config": job.model_dump(mode="json")})
    finally:
        executor.shutdown()
    return int(codes[0])


RAY_TRAIN_POLL_ENV, RAY_TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
RAY_TRAIN_WORKER = "RayTrainWorker"  # the actor class of Ray Train's workers
STATE_LIMIT, STATE_TIMEOUT_S = 10_000, 10  # Ray's state API: rows per call (its cap), and seconds


def worker_count(world_size: int, min_workers: int | None) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: fixed, or ``(min, max)`` for an elastic run (Ray Train V2, Ray 2.60)."""
    if min_workers is None or min_workers >= world_size:
        return world_size
    return (min_workers, world_size)


def fit(plan: LaunchPlan) -> int:
    """Run the plan's job with a TorchTrainer on the current Ray cluster; return its exit code."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.ray_worker import worker_main

    ray.init()  # inside `ray job submit`: joins the cluster; pass no resources
    if plan.job.preflight is not None:
        code = preflight(plan)
        if code != exit_codes.SUCCESS or os.environ.get("PODRUN_PREFLIGHT_ONLY"):
            return code
    if plan.job.comm == "horovod":
        code = fit_horovod(plan)
        finish_records(plan)
        return report(code)
    job, ray_cfg = plan.job, plan.profile.ray
    use_gpu = job.device == "cuda"
    # Ray Train's controller sees the workers end at its next poll (2 s apart by default), and only then frees
    # them: part of device_release_s. The driver passes this to the controller (Ray Train's ENV_VARS_TO_PROPAGATE);
    # a poll that takes longer is awaited at the next one, not counted as a failure.
    os.environ.setdefault(RAY_TRAIN_POLL_ENV, RAY_TRAIN_POLL_S)
    resources = ray_cfg.resources_per_worker or ({"GPU": 1} if use_gpu else {"CPU": 1})
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"job": job.model_dump(mode="json")},
        # a job of several nodes spreads its workers over the nodes (Ray's default packs them onto the
        # first node that has room, which on CPU nodes can be one node for the whole job)
        scaling_config=ScalingConfig(num_workers=worker_count(job.world_size, ray_cfg.min_workers), use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy="SPREAD" if job.nodes > 1 else "PACK"),
        run_config=RunConfig(
            name=job.job_id,
            storage_path=ray_cfg.storage_path or str(Path(job.checkpoint_dir).parent / "ray"),
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
        ),
    )
    result = trainer.fit()
    finish_records(plan, train_workers=True)
    return report(outcome(result))


def workers_ended_at() -> float | None:
    """When the last of this job's Ray Train workers exited, as Ray's state API recorded it; None if unknown.

    That is the end of the worker group, and of ``device_release_s``: each worker's process
    holds its GPU until it exits. ``fit()`` returns later, after Ray Train's controller has
    removed the placement group and built the result (0.1-1.0 s on the test hosts).
    Without Ray's dashboard (which serves the state API) this is None: the caller uses the
    time ``fit()`` returned.
    """
    import ray
    from ray.util.state import list_actors, list_workers

    try:
        job_id = ray.get_runtime_context().get_job_id()
        actors = list_actors(filters=[("class_name", "=", RAY_TRAIN_WORKER), ("job_id", "=", job_id)],
                             limit=STATE_LIMIT, timeout=STATE_TIMEOUT_S, raise_on_missing_output=False)
        ours = {(actor.node_id, actor.pid) for actor in actors if actor.pid}
        ends = [worker.end_time_ms for worker in list_workers(
                    filters=[("is_alive", "=", "False")], detail=True, limit=STATE_LIMIT,
                    timeout=STATE_TIMEOUT_S, raise_on_missing_output=False)
                if (worker.node_id, worker.pid) in ours and worker.end_time_ms]
    except Exception as exc:  # noqa: BLE001 - the state API is optional; say why and use fit()'s return
        print(f"[ray] the workers' exit times are unknown ({type(exc).__name__}: {exc}); "
              "device_release_s is measured to fit()'s return", flush=True)
        return None
    if not ours or len(ends) < len(ours):  # a worker still alive, or one Ray no longer lists
        print(f"[ray] Ray's state API gave the exit time of {len(ends)} of {len(ours)} worker(s); "
              "device_release_s is measured to fit()'s return", flush=True)
        return None
    return max(ends) / 1000


def outcome(result: Any) -> int:
    """The job's exit code from Ray Train's ``Result``: rank 0's return value (:func:`jobs.ray_worker.worker_main`).

    A Ray whose ``Result`` has no ``return_value`` gets it in the metrics of the workers' last
    report instead (:meth:`jobs.ray_worker.RayHooks.finished`). A run that failed has neither: failed.
    """
    code = getattr(result, "return_value", None)
    if code is None:
        code = (result.metrics or {}).get("exit_code", exit_codes.FAILED)
    return int(code)


def finish_records(plan: LaunchPlan, train_workers: bool = False) -> None:
    """The workers are gone: send the run's last records (the model, the run page) from the driver.

    The driver holds no GPU (it runs on the head node), so exporting and registering the model
    here keeps the workers' GPUs free. ``device_release_s`` ends at the last Ray Train worker's
    exit (``train_workers``: :func:`workers_ended_at`), or now. Inside a Slurm allocation
    (``--on slurm``) this would hold the allocation: the launcher or ``podrun sync`` does it there.
    """
    if os.environ.get("SLURM_JOB_ID"):
        return
    from jobs.tracking.sender import library_output, replay_spool
    from jobs.tracking.spool import SpoolError, spool_pending
    from jobs.tracking.system_metrics import tracking_log

    began, job = time.time(), plan.job
    spool = Path(job.job_dir) / "mlflow-spool"
    if not spool_pending(spool):
        return
    released_at = began
    if train_workers:  # another node's clock may run ahead of this one: never after now
        released_at = min(workers_ended_at() or began, began)
    if released_at < began:
        print(f"[ray] the last worker exited {began - released_at:.2f} s before fit() returned", flush=True)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the model is exported on the CPU
    try:
        with library_output(tracking_log(job.job_dir)):
            sent = replay_spool(spool, released_at=released_at, run_info_dir=Path(job.checkpoint_dir))
    except SpoolError as exc:
        print(f"[ray] MLflow records kept for podrun sync: {exc}", flush=True)
        return
    print(f"[ray] the workers have exited; {sent} last MLflow record(s) sent in {time.time() - began:.1f} s",
          flush=True)


def preflight(plan: LaunchPlan) -> int:
    """The node checks, one Ray task per node; their outcome as the driver's exit code."""
    code = run_ray_preflight(plan)
    if code == exit_codes.SUCCESS:
        print("[ray] preflight passed", flush=True)
        return code
    return report(code)


def report(code: int) -> int:
    """The driver's last line, which the Ray backend reads for the outcome."""
    print(f"[ray] finished: {exit_codes.DESCRIPTIONS.get(code, 'failed')}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    from orchestrator.spec.run_record import announce

    try:
        plan = load_plan(sys.argv[1:] if argv is None else argv)
        print(f"[ray] {announce(plan)}", flush=True)
        return fit(plan)
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
