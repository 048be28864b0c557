"""What each Ray Train worker runs: the shared per-rank code, reporting checkpoints to Ray.

The Ray job's driver (:mod:`orchestrator.backends.ray_job`) starts a ``TorchTrainer`` whose workers
run :func:`worker_main`: each becomes rank ``world_rank`` and runs :func:`jobs.run.run_rank`,
as the local and Slurm paths do. Ray only starts the ranks, restarts them after a failure
(``FailureConfig``), and keeps the checkpoints they report through :class:`RayHooks`.
Under ``comm: horovod`` Horovod's ``RayExecutor`` runs :func:`horovod_worker` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import checksum_path
from jobs.contract.job import ResolvedJob, resized
from jobs.rank.state import LoopState


class RayHooks:
    """Report checkpoints and the outcome to Ray Train (every worker calls ``report``)."""

    def checkpointed(self, path: Path | None, state: LoopState) -> None:
        import ray.train

        metrics = {"epoch": state.epoch, "global_step": state.global_step, "best_metric": state.best_metric}
        if path is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as staging:
            # Ray copies the folder into its storage; the original stays in checkpoint_dir.
            shutil.copy2(path, Path(staging) / path.name)
            if checksum_path(path).is_file():  # resume checks the copy against it
                shutil.copy2(checksum_path(path), Path(staging) / checksum_path(path).name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))

    def finished(self, code: int, state: LoopState) -> None:
        import ray.train

        if returns_values():
            # The outcome is worker_main's return value. A last report would be one more item in
            # each worker's result queue, and Ray Train's controller takes one per poll (0.5 s
            # apart): the workers, and their GPUs, would be freed a poll later.
            return
        metrics = {"exit_code": code, "epoch": state.epoch, "global_step": state.global_step,
                   "best_metric": state.best_metric}
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)
            return
        # Result.metrics are those of the latest checkpoint, so the outcome travels with one.
        with tempfile.TemporaryDirectory() as staging:
            (Path(staging) / "outcome.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))


def returns_values() -> bool:
    """Whether this Ray's ``Result`` carries rank 0's return value (``Result.return_value``, Ray Train v2)."""
    import ray.train

    return "return_value" in getattr(ray.train.Result, "__dataclass_fields__", {})


def worker_main(config: dict[str, Any]) -> int:
    """One Ray Train worker: become rank ``world_rank``, run the shared per-rank code; its exit code.

    Rank 0's exit code reaches the driver as ``Result.return_value``
    (:func:`orchestrator.backends.ray_job.outcome`).
    """
    import ray.train

    from jobs.rank.phases import mark_origin
    from jobs.run import run_rank

    mark_origin()  # Ray reuses worker processes: the rank starts now, not at process start
    context = ray.train.get_context()
    os.environ.update(RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_RANK=str(context.get_local_rank()))
    # an elastic run may go on with fewer workers than the job asks for: the same global batch
    job = resized(ResolvedJob.model_validate(config["job"]), context.get_world_size())
    with _reported_checkpoint() as resume_from:
        code = run_rank(job, hooks=RayHooks(), resume_from=resume_from)
    if code == exit_codes.FAILED:
        raise RuntimeError(f"rank {context.get_world_rank()} failed")  # lets FailureConfig restart the group
    return code


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
    from jobs.rank.phases import mark_origin
    from jobs.run import run_rank

    mark_origin()

    return run_rank(ResolvedJob.model_validate(config))
