"""Run a job on a Ray cluster with Ray Train: the entrypoint of a Ray job.

With Ray's own CLI (token auth on: ``RAY_AUTH_MODE=token``, see the README)::

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m jobs.ray_train recipes/jobs/resnet50-tiny.yaml

or through podrun: ``podrun launch JOB --backend ray``. Each of the
``nodes x tasks_per_node`` Ray Train workers runs the same per-rank code as the local
and Slurm paths (:func:`jobs.run.run_rank`); Ray only starts the ranks, restarts them
after a failure (``FailureConfig``), and keeps the checkpoints they report.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from jobs import status
from orchestrator.config import ResolvedJob
from orchestrator.errors import PodrunError

CONFIG_ENV = "PODRUN_RESOLVED_CONFIG"


def resolve_for_ray(argv: list[str]) -> ResolvedJob:
    """The job to run: ``$PODRUN_RESOLVED_CONFIG`` (set by ``podrun launch``) or a job reference + ``--set``."""
    if os.environ.get(CONFIG_ENV):
        return ResolvedJob.model_validate(yaml.safe_load(os.environ[CONFIG_ENV]))
    if argv[:1] == ["--config"] and len(argv) == 2:
        from jobs.run import load_resolved

        return load_resolved(Path(argv[1]))
    from orchestrator.resolve import load_job

    if not argv:
        raise PodrunError("usage: python -m jobs.ray_train JOB [--set KEY=VALUE ...]")
    ref, assignments, rest = argv[0], [], argv[1:]
    while rest:
        flag, value, rest = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
        if flag != "--set" or not value:
            raise PodrunError(f"unexpected argument {flag!r}: use --set KEY=VALUE")
        assignments.append(value)
    return load_job(ref, assignments, backend="ray")


class RayHooks:
    """Report checkpoints and the outcome to Ray Train (every worker calls ``report``)."""

    def checkpointed(self, path: Path | None, state: dict[str, Any]) -> None:
        import ray.train

        metrics = {"epoch": state["epoch"], "global_step": state["global_step"], "best_metric": state["best_metric"]}
        if path is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as staging:
            # Ray copies the folder into its storage; the original stays in checkpoint_dir.
            shutil.copy2(path, Path(staging) / path.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))

    def finished(self, code: int, state: dict[str, Any]) -> None:
        import ray.train

        metrics = {"exit_code": code, "epoch": state["epoch"], "global_step": state["global_step"],
                   "best_metric": state["best_metric"]}
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)
            return
        # Result.metrics are those of the latest checkpoint, so the outcome travels with one.
        with tempfile.TemporaryDirectory() as staging:
            (Path(staging) / "outcome.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))


def worker_main(config: dict[str, Any]) -> None:
    """One Ray Train worker: become rank ``world_rank`` and run the shared per-rank code."""
    import ray.train

    from jobs.run import run_rank

    context = ray.train.get_context()
    os.environ.update(RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_RANK=str(context.get_local_rank()))
    job = ResolvedJob.model_validate(config["job"])
    with _reported_checkpoint() as resume_from:
        code = run_rank(job, hooks=RayHooks(), resume_from=resume_from)
    if code == status.FAILED:
        raise RuntimeError(f"rank {context.get_world_rank()} failed")  # lets FailureConfig restart the group


class _reported_checkpoint:
    """The latest checkpoint Ray Train kept (after a restart), as a local file, or None."""

    def __enter__(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        self._context = checkpoint.as_directory() if checkpoint else None
        if self._context is None:
            return None
        folder = Path(self._context.__enter__())
        found = sorted(folder.glob("ckpt-*.pt"))
        return found[-1] if found else None

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)


def horovod_worker(config: dict[str, Any]) -> int:
    """One Horovod worker under RayExecutor (which sets the HOROVOD_* contract)."""
    from jobs.run import run_rank

    return run_rank(ResolvedJob.model_validate(config))


def fit_horovod(job: ResolvedJob) -> int:
    """``comm: horovod`` on Ray: Horovod's own RayExecutor (Ray Train V2 has no HorovodTrainer).

    RayExecutor does not restart workers, so a failure ends the run; resume it with
    ``podrun launch ... --resume``.
    """
    from horovod.ray import RayExecutor

    use_gpu = job.device == "cuda"
    executor = RayExecutor(RayExecutor.create_settings(timeout_s=600), num_workers=job.world_size,
                           cpus_per_worker=1, use_gpu=use_gpu, gpus_per_worker=1 if use_gpu else None)
    executor.start()
    try:
        codes = executor.run(horovod_worker, kwargs={"config": job.model_dump(mode="json")})
    finally:
        executor.shutdown()
    code = int(codes[0])
    print(f"[ray] finished: {status.DESCRIPTIONS.get(code, 'failed')}", flush=True)
    return code


def fit(job: ResolvedJob) -> int:
    """Run ``job`` with a TorchTrainer on the current Ray cluster; return a :mod:`jobs.status` code."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init()  # inside `ray job submit`: joins the cluster; pass no resources
    if job.job.comm == "horovod":
        return fit_horovod(job)
    ray_cfg = job.profile.ray
    use_gpu = job.device == "cuda"
    resources = ray_cfg.resources_per_worker or ({"GPU": 1} if use_gpu else {"CPU": 1})
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"job": job.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=job.world_size, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=job.job_id,
            storage_path=ray_cfg.storage_path or str(Path(job.checkpoint_dir).parent / "ray"),
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
        ),
    )
    result = trainer.fit()
    code = int((result.metrics or {}).get("exit_code", status.FAILED))
    print(f"[ray] finished: {status.DESCRIPTIONS.get(code, 'failed')}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        return fit(resolve_for_ray(sys.argv[1:] if argv is None else argv))
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return status.FAILED


if __name__ == "__main__":
    sys.exit(main())
