"""The one training loop every rank runs, whatever backend started it.

Launch it through podrun (``podrun launch recipes/jobs/resnet50-tiny.yaml``), or by hand
on a resolved config that ``podrun render`` wrote::

    RANK=0 WORLD_SIZE=1 python -m jobs.run .podrun/jobs/<id>/config.resolved.yaml

Only rank 0 logs to MLflow and MLPerf, and writes checkpoints. SIGUSR2 or SIGTERM sets a
flag; at the next stop vote (every ``train.stop_check_every`` steps, see
:mod:`jobs.rank.stopping`) every rank agrees to stop at the same step, rank 0 writes a
checkpoint and the ranks exit with :data:`jobs.contract.exit_codes.PREEMPTED`, ready to resume.

A step asks nothing of the host but to queue work: the loss is read (a host-device sync)
and the ranks' counts are summed (a collective) only on steps that log.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jobs.contract import exit_codes
from jobs.contract.errors import PodrunError
from jobs.contract.job import ResolvedJob
from jobs.contract.placement import RankInfo
from jobs.contract.progress import ProgressLine, format_eta
from jobs.rank.checkpoint import latest_checkpoint, load_resumable, save_checkpoint
from jobs.rank.dist import COLLECTIVES, all_reduce_sum, gather_hosts, gather_object, horovod
from jobs.rank.mlperf_log import MlperfLogger, log_submission
from jobs.rank.optim import build_optimizer, learning_rate, set_learning_rate
from jobs.rank.phases import PhaseClock, remember_end, remember_start
from jobs.rank.precision import autocast_for, check_precision, grad_scaler
from jobs.rank.rng import rng_state, seed_everything, set_rng_state
from jobs.rank.state import LoopState
from jobs.rank.stopping import StopFlag, StopVote
from jobs.rank.stragglers import Comparison, Stragglers
from jobs.rank.watchdog import Watchdog
from jobs.tasks.base import build_task
from jobs.tracking.run_tracking import RunTracking, log_hang_files


class Window:
    """Work done since the last progress line (this rank's items, micro-batches, start time)."""

    def __init__(self) -> None:
        self.start, self.items, self.micro_batches = time.time(), 0, 0
        self.compute_s = 0.0  # this rank's compute in the window, read at its end (PhaseClock.window_compute_s)

    def add(self, items: int) -> None:
        self.items += items
        self.micro_batches += 1


def unwrapped_state(state: dict[str, Any]) -> dict[str, Any]:
    """A model state dict without the key prefixes of wrappers (``torch.compile``, DDP).

    podrun saves the bare module's state, so its checkpoints have none; this also loads one
    saved from a wrapped model by other code.
    """
    prefixes = ("_orig_mod.", "module.")
    while state and all(key.startswith(prefixes) for key in state):
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    return state


def say(message: str) -> None:
    print(message, flush=True)


class Trainer:
    """Runs one recipe on one rank from start (or the latest checkpoint) to its target."""

    def __init__(self, job: ResolvedJob, info: RankInfo, device: torch.device, hooks: Any = None,
                 resume_from: Path | None = None, tracker: Any = None) -> None:
        self.job, self.info, self.device = job, info, device
        self.hooks = hooks  # optional: checkpointed(path, state) and finished(code, state) on every rank
        self.recipe = job.recipe
        self.stop = StopFlag()
        self.vote = StopVote(self.recipe.train.stop_check_every, device, info.world_size)
        self.ckpt_dir = Path(job.checkpoint_dir)
        self.job_dir = Path(job.job_dir)
        self.mllog = MlperfLogger(self._mllog_path(), enabled=info.is_main)
        self.mllog.event("cache_clear", True)  # before init_start: ruleset 0.6.0 requires it, later ones allow it
        self.mllog.start("init_start")
        seed_everything(self.recipe.train.seed)
        slow = check_precision(self.recipe.train.precision, device)
        if slow and info.is_main:
            say(slow)
        self.autocast = autocast_for(self.recipe.train.precision, device)
        self.task = build_task(job, device, self.autocast)
        self.model = self._build_model()
        self.optimizer = self._wrap_optimizer(build_optimizer(self.module, self.recipe.optim, job.derived))
        self.scaler = grad_scaler(self.recipe.train.precision, device)
        self.train_loader, self.val_loader = self.task.build_loaders(info.rank, info.world_size)
        self.steps_per_epoch = len(self.train_loader)  # micro-batches: the data position
        updates_per_epoch = math.ceil(self.steps_per_epoch / job.derived.update_freq)
        self.total_steps = updates_per_epoch * self.recipe.train.epochs  # optimizer steps: the LR schedule
        warmup = self.recipe.schedule.warmup_steps
        self.warmup_steps = warmup if warmup is not None else int(job.derived.warmup_epochs * updates_per_epoch)
        self.lr = job.derived.lr
        self.state = LoopState(world_size=info.world_size)
        self.phases = PhaseClock(device)  # where the wall time goes (jobs/rank/phases.py)
        self.stragglers = Stragglers(job.straggler, info.rank, info.world_size, device, self.job_dir)
        self.stragglers.attach(self.ddp)
        self.resumed_from = self._maybe_resume(resume_from)
        if self.hvd is not None:  # every rank starts from rank 0's state
            self.hvd.broadcast_parameters(self.module.state_dict(), root_rank=0)
            self.hvd.broadcast_optimizer_state(self.optimizer, root_rank=0)
        self.tracking = RunTracking(job, info, self.resumed_from, tracker) if info.is_main else None
        self.watchdog = Watchdog(self.job_dir, info.rank, info.world_size, job.watchdog_timeout_s, self._stalled,
                                 records_hangs=self.tracking is not None)

    # ------------------------------------------------------------------ set-up

    def _mllog_path(self) -> Path:
        resumed = latest_checkpoint(self.ckpt_dir)
        name = f"mlperf.resume-{resumed.stem}.log" if resumed else "mlperf.log"
        return self.job_dir / name

    def _build_model(self) -> nn.Module:
        model = self.task.build_model().to(self.device)
        self.hvd = horovod()
        # Horovod's collectives need contiguous tensors, so under Horovod the weights (and their
        # gradients) stay NCHW; the inputs are still channels_last.
        if self.recipe.train.channels_last and self.hvd is None:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.ddp: DistributedDataParallel | None = None
        if self.info.world_size > 1 and self.hvd is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self.ddp = DistributedDataParallel(model, device_ids=ids)
        if self.recipe.train.compile:
            if self.info.is_main:
                say("[compile] torch.compile: the first steps compile the model (minutes on a small CPU)")
            # None: a second batch shape turns on dynamic shapes; True skips the static first compile.
            model = torch.compile(model, dynamic=True if self.task.varying_shapes else None)
        return model

    def _wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Horovod's DistributedOptimizer on the Horovod path; DDP needs no wrapper."""
        if self.hvd is None:
            return optimizer
        compression = self.hvd.Compression.fp16 if self.job.horovod.fp16_compression else self.hvd.Compression.none
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=self.module.named_parameters(),
                                             compression=compression,
                                             backward_passes_per_step=self.job.derived.update_freq)

    def _maybe_resume(self, path: Path | None) -> str | None:
        found = load_resumable(self.ckpt_dir, path)  # a truncated or damaged one is skipped, with a warning
        if found is None:
            return None
        path, checkpoint = found
        self.module.load_state_dict(unwrapped_state(checkpoint["model"]))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = LoopState.from_dict(checkpoint["progress"])
        self.state.on_world_size(self.info.world_size)  # an elastic run may resume on fewer ranks
        # Wall time from the checkpoint to this restart (queueing, start-up): lost to preemption.
        self.state.time_lost_s += max(time.time() - self.state.saved_at, 0.0) if self.state.saved_at else 0.0
        set_rng_state(checkpoint["rng"], self.info.rank, self.info.world_size)
        if self.info.is_main:
            say(f"[resume] {path.name}: epoch {self.state.epoch + 1}, step {self.state.step_in_epoch}"
                f" of {self.steps_per_epoch}, global step {self.state.global_step}")
        return path.name

    def _checkpoint(self) -> None:
        """Rank 0 writes the checkpoint; every rank then tells the hooks (a collective for Ray)."""
        with self.phases.measure("checkpoint"):
            self.state.train_time_s = self._elapsed()
            self.state.saved_at = time.time()
            self.state.phases = self.phases.totals(self.state.saved_at)
            rng = gather_object(rng_state())  # every rank's stream (dropout draws differ per rank), to rank 0
            path = self._write_checkpoint(rng) if self.info.is_main else None
            if self.hooks:
                self.hooks.checkpointed(path, self.state)

    def _write_checkpoint(self, rng: list[dict[str, Any]]) -> Path:
        state = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": self.state.to_dict(),
            "rng": rng,
            "job_id": self.job.job_id,
        }
        path = save_checkpoint(self.ckpt_dir, state, self.state.global_step, self.recipe.train.keep_checkpoints)
        say(f"[checkpoint] {path}")
        return path

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Train to the target or the last epoch; return a :mod:`jobs.contract.exit_codes` exit code."""
        self.stop.install()
        self._start_logs()
        code = exit_codes.FAILED
        try:
            code = self._train()
        except PodrunError as exc:  # e.g. a checkpoint that could not be written: its own exit code
            code, self.note = exc.exit_code, str(exc)
            raise
        finally:
            self._finish(code)
        return code

    def _start_logs(self) -> None:
        if self.info.is_main:
            log_submission(self.mllog, self.recipe.mlperf, platform=self._platform())
            self.task.log_hparams(self.mllog, self.train_loader, self.val_loader)
        self.mllog.end("init_stop")
        self.mllog.start("run_start")
        self.run_started = time.time()
        self.train_time_base = self.state.train_time_s
        self.phases.start_run(self.state.phases, self.state.saved_at, self.run_started)
        if self.info.is_main:
            remember_start(self.ckpt_dir, self.phases)
        self.first_step, self.collectives_before = self.state.global_step, Counter(COLLECTIVES)
        hosts = self.stragglers.hosts = gather_hosts()  # a collective: every rank takes part
        self.watchdog.start()
        if self.tracking:
            self.tracking.start(hosts, self.steps_per_epoch, self.train_loader.samples, self.val_loader.samples)

    def _platform(self) -> str:
        gpus = self.job.tasks_per_node if self.device.type == "cuda" else 0
        what = f"{gpus}x{torch.cuda.get_device_name(0)}" if gpus else f"{self.job.tasks_per_node}xCPU"
        return f"{self.job.nodes}x{socket.gethostname()}({what})"

    def _train(self) -> int:
        for epoch in range(self.state.epoch, self.recipe.train.epochs):
            self.mllog.start("block_start", metadata={"first_epoch_num": epoch + 1, "epoch_count": 1})
            self.mllog.start("epoch_start", metadata={"epoch_num": epoch + 1})
            if not self._train_epoch(epoch):
                return exit_codes.REPLACE if self.stop.replace_reason else exit_codes.PREEMPTED
            self.mllog.end("epoch_stop", metadata={"epoch_num": epoch + 1})
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
            reached = self._maybe_evaluate(epoch)
            self.mllog.end("block_stop", metadata={"first_epoch_num": epoch + 1})
            if reached:
                self._checkpoint()
                return exit_codes.SUCCESS
            saved = self._checkpoint_due(epoch)
            if saved:
                self._checkpoint()
            if epoch + 1 < self.recipe.train.epochs and self.vote.settle(self.stop.requested):
                self._on_stop(checkpoint=not saved)  # a signal during evaluation or the epoch's last steps
                return exit_codes.PREEMPTED
        return exit_codes.NOT_REACHED

    def _checkpoint_due(self, epoch: int) -> bool:
        every = self.recipe.train.checkpoint_every
        last = epoch + 1 == self.recipe.train.epochs
        return last or bool(every and (epoch + 1) % every == 0)

    def _train_epoch(self, epoch: int) -> bool:
        """Train one epoch (from the saved position); False if a stop was requested."""
        self.model.train()
        skip = self.state.step_in_epoch
        window = Window()
        update_freq = self.job.derived.update_freq
        for index, batch in enumerate(self.phases.waiting(self.train_loader.epoch(epoch, skip=skip)), start=skip):
            self.watchdog.progress(epoch * self.steps_per_epoch + index)
            boundary = (index + 1) % update_freq == 0 or index + 1 == self.steps_per_epoch
            with self.phases.compute:
                loss, items = self._micro_step(batch, boundary, update_freq)
            window.add(items)
            self.state.step_in_epoch = index + 1
            if not boundary:
                continue  # a stop or a checkpoint only happens between optimizer steps
            if self.state.global_step % self.recipe.train.log_every == 0 or index + 1 == self.steps_per_epoch:
                self._report(epoch, index + 1, loss, window)
                window = Window()
            # a replace is decided by every rank at the same step (jobs.rank.stragglers): no vote
            if self.stop.replace_reason or self.vote.after_step(self.state.global_step, self.stop.requested):
                self._on_stop()
                return False
        return True

    def _micro_step(self, batch: Any, boundary: bool, update_freq: int) -> tuple[torch.Tensor, int]:
        """Forward and backward one micro-batch; step the optimizer at an update boundary."""
        accumulate = not boundary and self.ddp is not None
        self.stragglers.clock.begin()
        with self.ddp.no_sync() if accumulate else contextlib.nullcontext():
            loss, items = self.task.train_step_loss(self.model, batch)
            self.scaler.scale(loss / update_freq if update_freq > 1 else loss).backward()
        self.stragglers.clock.ready()  # DDP's comm hook marked it already, before the all-reduce's wait
        if boundary:
            self.lr = learning_rate(self.state.global_step, base_lr=self.job.derived.lr,
                                    end_lr=self.recipe.optim.end_lr, warmup_steps=self.warmup_steps,
                                    total_steps=self.total_steps, schedule=self.recipe.schedule)
            set_learning_rate(self.optimizer, self.lr)
            if self.hvd is not None:
                self.optimizer.synchronize()  # the allreduce, also for a short last window
                with self.optimizer.skip_synchronize():
                    self.scaler.step(self.optimizer)
            else:
                self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()  # set_to_none is the default (and Horovod takes no argument)
            self.state.global_step += 1
        return loss.detach(), items

    def _report(self, epoch: int, step: int, loss_tensor: torch.Tensor, window: Window) -> None:
        """Progress line, metrics and the straggler check; a collective (every rank calls it at the same step)."""
        loss = float(loss_tensor)  # the only sync, on logging steps
        window.compute_s = self.phases.window_compute_s()  # after that sync: a GPU's events have completed
        # One sum: the items, and each rank's time outside collectives in a slot of its own (jobs.rank.stragglers).
        slots = self.stragglers.slots(window.items, self.phases.window_data_wait_s())
        items, *seconds = all_reduce_sum([float(window.items), *slots], self.device)
        self.state.items += int(items)
        compared = self.stragglers.compare(seconds, self.state.global_step)
        self.stop.replace_reason = self.stragglers.replace_reason  # the same on every rank
        elapsed = max(time.time() - window.start, 1e-9)
        if not self.info.is_main:
            return
        remaining = self.steps_per_epoch * self.recipe.train.epochs - (epoch * self.steps_per_epoch + step)
        eta = remaining * elapsed / max(window.micro_batches, 1)
        rate = items / elapsed
        line = ProgressLine(epoch + 1, self.recipe.train.epochs, step, self.steps_per_epoch, rate,
                            self.task.unit, loss, self.lr, format_eta(eta))
        say(line.format())
        if self.tracking:
            self.tracking.step_metrics(self.state.global_step, loss, self.lr, rate)
        if compared:
            self._report_stragglers(compared)

    def _report_stragglers(self, compared: Comparison) -> None:
        """Rank 0: the slowest rank's ratio every window; the named ones when they change."""
        changed = self.stragglers.record(compared, say)
        if self.tracking:
            self.tracking.stragglers(self.state.global_step, compared.worst, changed)

    def _on_stop(self, checkpoint: bool = True) -> None:
        if self.info.is_main:
            why = self.stop.signal_name or "signal on another rank"
            why = f"to replace a straggler ({self.stop.replace_reason})" if self.stop.replace_reason else why
            say(f"[stop] {why}: checkpointing at epoch"
                f" {self.state.epoch + 1} step {self.state.step_in_epoch}")
        if checkpoint:
            self._checkpoint()

    def _say_collectives(self) -> None:
        """How often this run stopped to talk to the other ranks, besides the gradients' all-reduce."""
        if self.info.world_size > 1 and hasattr(self, "first_step"):
            calls = COLLECTIVES - self.collectives_before
            say(f"[comm] {calls.total()} collectives in {self.state.global_step - self.first_step} optimizer"
                f" steps ({', '.join(f'{name} {count}' for name, count in sorted(calls.items()))})")

    def _elapsed(self) -> float:
        """Training time so far, across resumed attempts (time-to-train, MLPerf-style)."""
        return self.train_time_base + time.time() - self.run_started

    def _maybe_evaluate(self, epoch: int) -> bool:
        cfg = self.recipe.eval
        last = epoch + 1 == self.recipe.train.epochs
        if epoch < cfg.start_epoch or not ((epoch + 1) % cfg.every_epochs == 0 or last):
            return False
        self.mllog.start("eval_start", metadata={"epoch_num": epoch + 1})
        self.model.eval()
        with self.phases.measure("eval"):
            metric = self.task.evaluate(self.module, self.watchdog.watch(self.val_loader), epoch)
        self.model.train()
        self.mllog.event("eval_accuracy", metric, metadata={"epoch_num": epoch + 1})
        self.mllog.end("eval_stop", metadata={"epoch_num": epoch + 1})
        self.state.evals.append((epoch + 1, metric))
        self.state.best_metric = self.task.best([value for _, value in self.state.evals])
        if self.info.is_main:
            say(f"[eval] epoch {epoch + 1} {self.task.metric} {metric:.4f} (target {cfg.target})")
        if self.tracking:
            self.tracking.eval_metric(metric, epoch + 1)
        return self.task.reached(metric, cfg.target)

    def _stalled(self, note: str, hang_dir: Path | None) -> None:
        """The watchdog's verdict (from its thread, which said it): record it, end the process (jobs.rank.watchdog).

        ``hang_dir`` holds the ranks' stacks and traces; rank 0 logs them under ``hang/`` in MLflow.
        """
        say("[watchdog] stopping the job: resume it with --resume")
        try:
            exit_codes.write_outcome(self.job_dir, exit_codes.STALLED, note=note)  # any rank that sees it
            # The loop's thread is blocked in a collective or waits in watchdog.stop(): the tracker is ours.
            if self.tracking:
                if hang_dir is not None and log_hang_files(self.tracking.tracker, hang_dir):
                    say(f"[watchdog] MLflow: the stacks and traces go to the run's artifacts, hang/{hang_dir.name}/")
                self.tracking.finish(exit_codes.STALLED, self._elapsed(), self.state, self.mllog.path)
        finally:
            os._exit(exit_codes.STALLED)

    def _finish(self, code: int) -> None:
        self.watchdog.stop()
        time_to_train = self._elapsed()
        ended = time.time()
        self.state.phases = self.phases.totals(ended)
        if self.info.is_main:
            remember_end(self.ckpt_dir, self.state.phases, ended)
        if code in (exit_codes.SUCCESS, exit_codes.NOT_REACHED):
            self.mllog.end("run_stop", metadata={"status": "success" if code == exit_codes.SUCCESS else "aborted"})
        if self.info.is_main:
            exit_codes.write_outcome(self.job_dir, code, note=getattr(self, "note", ""))
            self._say_collectives()
            say(f"[done] {exit_codes.DESCRIPTIONS.get(code, 'failed')}: time to train {time_to_train:.1f} s,"
                f" best {self.task.metric} {self.state.best_metric:.4f}")
        if self.tracking:
            self.tracking.finish(code, time_to_train, self.state, self.mllog.path, val_loader=self.val_loader)
        self.train_loader.close()
        self.val_loader.close()
        if self.hooks:
            self.hooks.finished(code, self.state)
