"""One rank of one ``bench/step.py`` row: podrun's training loop and the bare loop, interleaved.

Started by ``bench/step.py`` (1 rank: ``python bench/step_worker.py``; 2 ranks: ``torchrun
--nproc-per-node 2 bench/step_worker.py``) on a resolved job the parent wrote. The rank
builds podrun's :class:`jobs.train.Trainer` as :func:`jobs.run.run_rank` does (its device,
process group, MLflow tracker unless ``--no-tracking``, progress lines, stop votes and MLPerf
log all on) and the bare loop of :mod:`bench.bare_step` on the same model config, batches,
precision, memory format and compile mode, and runs ``Trainer.run()`` with its loader
wrapped: between podrun's timed windows of ``--window`` steps the wrapper runs the bare
loop's windows on the same batches (order B0 P0 P1 B1 B2 P2 P3 B3 ..., so neither loop
always goes first).
After the last window rank 0's stop flag is set, as SIGUSR2 would set it: every rank stops
at the same step, rank 0 checkpoints, and a second Trainer resumes from that checkpoint and
trains a few more steps, so each row also shows that its mode runs, checkpoints and resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare_step import OPTIMIZERS, bare_model, bare_steps  # noqa: E402
from jobs.contract import exit_codes  # noqa: E402
from jobs.contract.job import ResolvedJob, load_resolved  # noqa: E402
from jobs.contract.placement import detect_rank_env  # noqa: E402
from jobs.rank.precision import AMP_DTYPES  # noqa: E402
from jobs.run import rank_device  # noqa: E402
from jobs.tracking.run_tracking import open_tracker  # noqa: E402
from jobs.train import Trainer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_bare_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, int]:
    """A podrun batch as the bare loop takes it: (inputs, target, items)."""
    if isinstance(batch, tuple):  # images, labels
        return (batch[0],), batch[1], int(batch[1].shape[0])
    return (batch.src, batch.tgt_in), batch.tgt_out, int(batch.ntokens)


class BareLoop:
    """The bare loop's model, optimizer and scaler, built like podrun's from the same job."""

    def __init__(self, job: ResolvedJob, trainer: Trainer, device: torch.device) -> None:
        recipe = job.recipe
        torch.manual_seed(recipe.train.seed)
        model = trainer.task.build_model().to(device)
        if recipe.train.channels_last:  # as jobs.train (a no-op on the Transformer's weights)
            model = model.to(memory_format=torch.channels_last)
        self.model = bare_model(model, job.world_size, recipe.train.compile,
                                True if trainer.task.varying_shapes else None)
        if job.derived.optimizer == "adam":
            self.optimizer = OPTIMIZERS["adamw"](model.parameters(), job.derived.lr, recipe.optim.betas,
                                                 recipe.optim.eps)
        else:
            self.optimizer = OPTIMIZERS["sgd"](model.parameters(), job.derived.lr, recipe.optim.momentum,
                                               recipe.optim.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.precision == "amp-fp16")
        self.amp_dtype = AMP_DTYPES.get(recipe.train.precision)
        self.translation = recipe.task == "translation"
        self.smoothing = recipe.train.label_smoothing

    def steps(self, batches: list) -> int:
        return bare_steps(self.model, self.optimizer, self.scaler, batches, self.amp_dtype,
                          loss_in_fp32=self.translation, smoothing=self.smoothing,
                          ignore_index=0 if self.translation else -100)


class Interleaved:
    """Podrun's training loader, calling ``before_step(index)`` before it hands out each batch."""

    def __init__(self, loader: Any, before_step) -> None:
        self.loader, self.before_step = loader, before_step

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, skip: int = 0):
        for index, batch in enumerate(self.loader.epoch(epoch, skip), start=skip):
            self.before_step(index)
            yield batch


class Bench:
    """Times podrun's windows (between marks) and the bare windows (at marks); see the module docstring."""

    def __init__(self, trainer: Trainer, bare: BareLoop, device: torch.device, args: argparse.Namespace) -> None:
        self.trainer, self.bare, self.device = trainer, bare, device
        self.warmup, self.window, self.repeats, self.profile = args.warmup, args.window, args.repeats, args.profile
        first = [as_bare_batch(b) for _, b in zip(range(self.warmup + self.window * self.repeats),
                                                  trainer.train_loader.epoch(0))]
        self.batches = [first[self.warmup + i * self.window:self.warmup + (i + 1) * self.window]
                        for i in range(self.repeats)]
        self.warm_batches = first[:self.warmup] or self.batches[0][:1]
        self.podrun_s, self.bare_s = [0.0] * self.repeats, [0.0] * self.repeats
        # this process's CPU time: on a CPU, steadier than wall time when other work shares the machine
        self.podrun_cpu_s, self.bare_cpu_s = [0.0] * self.repeats, [0.0] * self.repeats
        self.items = [float(sum(item for _, _, item in window)) for window in self.batches]
        self.profiles: dict[str, str] = {}
        self._started = self._started_cpu = 0.0
        self._profiler = None

    def before_step(self, index: int) -> None:
        offset = index - self.warmup
        if offset < 0 or offset % self.window or offset // self.window > self.repeats:
            return
        mark = offset // self.window
        sync(self.device)
        if mark > 0:
            self.podrun_s[mark - 1] = time.perf_counter() - self._started
            self.podrun_cpu_s[mark - 1] = time.process_time() - self._started_cpu
            self._stop_profiler("podrun")
            if (mark - 1) % 2 == 1:
                self._bare_window(mark - 1)
        if mark == 0:
            self.bare.steps(self.warm_batches)  # its compile, outside the timed windows
        if mark < self.repeats and mark % 2 == 0:
            self._bare_window(mark)
        if mark == self.repeats and self.trainer.info.is_main:
            self.trainer.stop.requested = True  # as SIGUSR2 would: the ranks agree at the next vote
        if mark == 1 and self.profile:
            self._profiler = start_profiler(self.device)
        sync(self.device)
        self._started, self._started_cpu = time.perf_counter(), time.process_time()

    def _bare_window(self, index: int) -> None:
        profiler = start_profiler(self.device) if self.profile and index == 1 else None
        sync(self.device)
        started, started_cpu = time.perf_counter(), time.process_time()
        self.bare.steps(self.batches[index])
        sync(self.device)
        self.bare_s[index] = time.perf_counter() - started
        self.bare_cpu_s[index] = time.process_time() - started_cpu
        if profiler is not None:
            self.profiles["bare"] = profile_table(profiler)

    def _stop_profiler(self, name: str) -> None:
        if self._profiler is not None:
            self.profiles[name] = profile_table(self._profiler)
            self._profiler = None


def start_profiler(device: torch.device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.__enter__()
    return profiler


def profile_table(profiler) -> str:
    profiler.__exit__(None, None, None)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=15)


def stop_after(trainer: Trainer, steps: int):
    """A ``before_step`` that sets rank 0's stop flag ``steps`` batches into the run."""
    start = trainer.state.step_in_epoch

    def before_step(index: int) -> None:
        if index - start == steps and trainer.info.is_main:
            trainer.stop.requested = True

    return before_step


class NoTracker:
    """Rank 0's tracker with nothing behind it (``--no-tracking``): no sender process, no monitor."""

    run_id = None

    def finish(self, *args, **kwargs) -> bool:
        return True

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def rank0_tracker(job: ResolvedJob, info, tracking: bool):
    if not info.is_main:
        return None
    if tracking:
        return open_tracker(job)
    print("[bench] --no-tracking: no MLflow sender or monitor; any [mlflow] line below sent nothing", flush=True)
    return NoTracker()


def resume_check(job: ResolvedJob, info, device: torch.device, saved_step: int, steps: int, tracking: bool) -> str:
    """A new Trainer resumes from the stop's checkpoint and trains ``steps`` more; what it saw."""
    tracker = rank0_tracker(job, info, tracking)
    try:
        trainer = Trainer(job, info, device, tracker=tracker)
        resumed_at = trainer.state.global_step
        trainer.train_loader = Interleaved(trainer.train_loader, stop_after(trainer, steps))
        code = trainer.run()
    finally:
        if tracker is not None:
            tracker.close()
    ok = trainer.resumed_from and resumed_at == saved_step and trainer.state.global_step > saved_step
    verdict = "ok" if ok and code in (exit_codes.PREEMPTED, exit_codes.NOT_REACHED) else "FAILED"
    return f"{verdict}: step {resumed_at} -> {trainer.state.global_step}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    # This process resumes its own stop (resume_check), which no backend does: a local job's sender
    # outlives its rank and finishes the run once the rank process has exited, so the resumed
    # attempt here would wait for it (up to 120 s). Its sender ends with the attempt, as on Slurm.
    job = load_resolved(args.config).model_copy(update={"backend": "slurm"})
    info = detect_rank_env()
    device = rank_device(job, info)
    if info.world_size > 1:
        from jobs.rank.dist import init_distributed

        init_distributed(info, device)
    tracker = rank0_tracker(job, info, args.tracking)
    try:
        trainer = Trainer(job, info, device, tracker=tracker)
        needed = args.warmup + args.repeats * args.window + 2 * job.recipe.train.stop_check_every + 1
        if len(trainer.train_loader) < needed:
            raise SystemExit(f"an epoch has {len(trainer.train_loader)} steps on this rank, the windows need "
                             f"{needed}: lower --repeats or --window")
        bench = Bench(trainer, BareLoop(job, trainer, device), device, args)
        trainer.train_loader = Interleaved(trainer.train_loader, bench.before_step)
        code = trainer.run()
    finally:
        if tracker is not None:
            tracker.close()
    if code != exit_codes.PREEMPTED:
        raise SystemExit(f"podrun's loop ended with {exit_codes.DESCRIPTIONS.get(code, code)}, not at the stop")
    items = bench.items
    if info.world_size > 1:
        import torch.distributed as dist

        summed = torch.tensor(items, dtype=torch.float64)
        dist.all_reduce(summed)
        items = summed.tolist()
    resume = resume_check(job, info, device, trainer.state.global_step, args.window, args.tracking)
    return {"podrun": [n / s for n, s in zip(items, bench.podrun_s)],
            "bare": [n / s for n, s in zip(items, bench.bare_s)],
            "ratio": [b / p for p, b in zip(bench.podrun_s, bench.bare_s)],
            "cpu_ratio": [b / p for p, b in zip(bench.podrun_cpu_s, bench.bare_cpu_s)], "resume": resume,
            "stopped_at": trainer.state.global_step, "profiles": bench.profiles, "device": device.type}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a config.resolved.yaml")
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes its figures here (JSON)")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile the second window of each loop")
    parser.add_argument("--no-tracking", dest="tracking", action="store_false",
                        help="no MLflow tracker on rank 0: no sender process, no system-metrics monitor")
    args = parser.parse_args()
    result = run(args)
    if detect_rank_env().is_main:
        args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
