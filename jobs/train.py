"""The one training loop every rank runs, whatever backend started it.

Launch it through podrun (``podrun launch recipes/jobs/resnet50-tiny.yaml``), or by hand
on a resolved config that ``podrun render`` wrote::

    RANK=0 WORLD_SIZE=1 python -m jobs.run .podrun/jobs/<id>/config.resolved.yaml

Only rank 0 logs to MLflow and MLPerf, and writes checkpoints. SIGUSR2 or SIGTERM sets a
flag; at the next step boundary every rank agrees to stop, rank 0 writes a checkpoint
and the ranks exit with :data:`jobs.exit_codes.PREEMPTED`, ready to resume.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jobs import exit_codes
from jobs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from jobs.dist import all_gather_object, all_reduce_sum, any_rank, gather_hosts, horovod
from jobs.job import ResolvedJob
from jobs.mlperf_log import MlperfLogger, log_submission
from jobs.optim import build_optimizer, learning_rate, set_learning_rate
from jobs.placement import RankInfo
from jobs.progress import ProgressLine, format_eta
from jobs.run_tracking import RunTracking
from jobs.tasks import build_task


class Window:
    """Work done since the last progress line (this rank's items, micro-batches, start time)."""

    def __init__(self) -> None:
        self.start, self.items, self.micro_batches = time.time(), 0, 0

    def add(self, items: int) -> None:
        self.items += items
        self.micro_batches += 1


class StopFlag:
    """Set by a signal handler; the loop checks it at step boundaries (handlers do nothing else)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Ray Train runs the loop in a thread; Ray owns the signals there
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(saved: list[dict[str, Any]], rank: int, world_size: int) -> None:
    """Restore this rank's RNG streams (rank 0's if the checkpoint came from another world size)."""
    state = saved[rank] if len(saved) == world_size else saved[0]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def say(message: str) -> None:
    print(message, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(precision: str, device: torch.device):
    """A zero-argument context factory for the recipe's precision."""
    if device.type == "cuda":
        allow_tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
    if precision.startswith("amp-"):
        dtype = torch.bfloat16 if precision == "amp-bf16" else torch.float16
        return lambda: torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext


class Trainer:
    """Runs one recipe on one rank from start (or the latest checkpoint) to its target."""

    def __init__(self, job: ResolvedJob, info: RankInfo, device: torch.device, hooks: Any = None,
                 resume_from: Path | None = None, tracker: Any = None) -> None:
        self.job, self.info, self.device = job, info, device
        self.hooks = hooks  # optional: checkpointed(path, state) and finished(code, state) on every rank
        self.recipe = job.recipe
        self.stop = StopFlag()
        self.ckpt_dir = Path(job.checkpoint_dir)
        self.job_dir = Path(job.job_dir)
        self.mllog = MlperfLogger(self._mllog_path(), enabled=info.is_main)
        self.mllog.event("cache_clear", True)  # before init_start: ruleset 0.6.0 requires it, later ones allow it
        self.mllog.start("init_start")
        seed_everything(self.recipe.train.seed)
        self.autocast = autocast_for(self.recipe.train.precision, device)
        self.task = build_task(job, device, self.autocast)
        self.model = self._build_model()
        self.optimizer = self._wrap_optimizer(build_optimizer(self.module, self.recipe.optim, job.derived))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.recipe.train.precision == "amp-fp16")
        self.train_loader, self.val_loader = self.task.build_loaders(info.rank, info.world_size)
        self.steps_per_epoch = len(self.train_loader)  # micro-batches: the data position
        updates_per_epoch = math.ceil(self.steps_per_epoch / job.derived.update_freq)
        self.total_steps = updates_per_epoch * self.recipe.train.epochs  # optimizer steps: the LR schedule
        warmup = self.recipe.schedule.warmup_steps
        self.warmup_steps = warmup if warmup is not None else int(job.derived.warmup_epochs * updates_per_epoch)
        self.lr = job.derived.lr
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_time_s": 0.0,
                      "items": 0, "best_metric": 0.0, "evals": [], "time_lost_s": 0.0,
                      "saved_at": 0.0}
        self.resumed_from = self._maybe_resume(resume_from)
        if self.hvd is not None:  # every rank starts from rank 0's state
            self.hvd.broadcast_parameters(self.module.state_dict(), root_rank=0)
            self.hvd.broadcast_optimizer_state(self.optimizer, root_rank=0)
        self.tracking = RunTracking(job, info, self.resumed_from, tracker) if info.is_main else None

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
            model = torch.compile(model)
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
        path = path or latest_checkpoint(self.ckpt_dir)
        if path is None:
            return None
        checkpoint = load_checkpoint(path)
        self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.state.update(checkpoint["progress"])
        # Wall time from the checkpoint to this restart (queueing, start-up): lost to preemption.
        self.state["time_lost_s"] += max(time.time() - self.state["saved_at"], 0.0) if self.state["saved_at"] else 0.0
        set_rng_state(checkpoint["rng"], self.info.rank, self.info.world_size)
        if self.info.is_main:
            say(f"[resume] {path.name}: epoch {self.state['epoch'] + 1}, step {self.state['step_in_epoch']}"
                f" of {self.steps_per_epoch}, global step {self.state['global_step']}")
        return path.name

    def _checkpoint(self) -> None:
        """Rank 0 writes the checkpoint; every rank then tells the hooks (a collective for Ray)."""
        self.state["train_time_s"] = self._elapsed()
        self.state["saved_at"] = time.time()
        rng = all_gather_object(rng_state())  # every rank's stream: dropout draws differ per rank
        path = self._write_checkpoint(rng) if self.info.is_main else None
        if self.hooks:
            self.hooks.checkpointed(path, dict(self.state))

    def _write_checkpoint(self, rng: list[dict[str, Any]]) -> Path:
        state = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": dict(self.state),
            "rng": rng,
            "job_id": self.job.job_id,
        }
        path = save_checkpoint(self.ckpt_dir, state, self.state["global_step"], self.recipe.train.keep_checkpoints)
        say(f"[checkpoint] {path}")
        return path

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Train to the target or the last epoch; return a :mod:`jobs.exit_codes` exit code."""
        self.stop.install()
        self._start_logs()
        code = exit_codes.FAILED
        try:
            code = self._train()
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
        self.train_time_base = self.state["train_time_s"]
        hosts = gather_hosts()  # a collective: every rank takes part
        if self.tracking:
            self.tracking.start(hosts, self.steps_per_epoch, self.train_loader.samples, self.val_loader.samples)

    def _platform(self) -> str:
        gpus = self.job.tasks_per_node if self.device.type == "cuda" else 0
        what = f"{gpus}x{torch.cuda.get_device_name(0)}" if gpus else f"{self.job.tasks_per_node}xCPU"
        return f"{self.job.nodes}x{socket.gethostname()}({what})"

    def _train(self) -> int:
        for epoch in range(self.state["epoch"], self.recipe.train.epochs):
            self.mllog.start("block_start", metadata={"first_epoch_num": epoch + 1, "epoch_count": 1})
            self.mllog.start("epoch_start", metadata={"epoch_num": epoch + 1})
            if not self._train_epoch(epoch):
                return exit_codes.PREEMPTED
            self.mllog.end("epoch_stop", metadata={"epoch_num": epoch + 1})
            self.state.update(epoch=epoch + 1, step_in_epoch=0)
            reached = self._maybe_evaluate(epoch)
            self.mllog.end("block_stop", metadata={"first_epoch_num": epoch + 1})
            if reached:
                self._checkpoint()
                return exit_codes.SUCCESS
            if self._checkpoint_due(epoch):
                self._checkpoint()
        return exit_codes.NOT_REACHED

    def _checkpoint_due(self, epoch: int) -> bool:
        every = self.recipe.train.checkpoint_every
        last = epoch + 1 == self.recipe.train.epochs
        return last or bool(every and (epoch + 1) % every == 0)

    def _train_epoch(self, epoch: int) -> bool:
        """Train one epoch (from the saved position); False if a stop was requested."""
        self.model.train()
        skip = self.state["step_in_epoch"]
        window = Window()
        update_freq = self.job.derived.update_freq
        for index, batch in enumerate(self.train_loader.epoch(epoch, skip=skip), start=skip):
            boundary = (index + 1) % update_freq == 0 or index + 1 == self.steps_per_epoch
            loss, items = self._micro_step(batch, boundary, update_freq)
            window.add(items)
            self.state["step_in_epoch"] = index + 1
            if not boundary:
                continue  # a stop or a checkpoint only happens between optimizer steps
            if self.state["global_step"] % self.recipe.train.log_every == 0 or index + 1 == self.steps_per_epoch:
                self._report(epoch, index + 1, float(loss), window)
                window = Window()
            if any_rank(self.stop.requested, self.device):
                self._on_stop(epoch)
                return False
        return True

    def _micro_step(self, batch: Any, boundary: bool, update_freq: int) -> tuple[torch.Tensor, int]:
        """Forward and backward one micro-batch; step the optimizer at an update boundary."""
        accumulate = not boundary and self.ddp is not None
        with self.ddp.no_sync() if accumulate else contextlib.nullcontext():
            loss, items = self.task.train_step_loss(self.model, batch)
            self.scaler.scale(loss / update_freq).backward()
        if boundary:
            self.lr = learning_rate(self.state["global_step"], base_lr=self.job.derived.lr,
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
            self.state["global_step"] += 1
        return loss.detach(), items

    def _report(self, epoch: int, step: int, loss: float, window: Window) -> None:
        """Progress line and metrics; a collective (every rank calls it at the same step)."""
        items, = all_reduce_sum([float(window.items)], self.device)
        self.state["items"] += int(items)
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
            self.tracking.step_metrics(self.state["global_step"], loss, self.lr, rate, self.task.unit)

    def _on_stop(self, epoch: int) -> None:
        if self.info.is_main:
            say(f"[stop] {self.stop.signal_name or 'signal on another rank'}: checkpointing at epoch {epoch + 1}"
                f" step {self.state['step_in_epoch']}")
        self._checkpoint()

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
        metric = self.task.evaluate(self.module, self.val_loader, epoch)
        self.model.train()
        self.mllog.event("eval_accuracy", metric, metadata={"epoch_num": epoch + 1})
        self.mllog.end("eval_stop", metadata={"epoch_num": epoch + 1})
        self.state["best_metric"] = max(self.state["best_metric"], metric)
        self.state["evals"].append((epoch + 1, metric))
        if self.info.is_main:
            say(f"[eval] epoch {epoch + 1} {self.task.metric} {metric:.4f} (target {cfg.target})")
        if self.tracking:
            self.tracking.eval_metric(self.task.metric, metric, epoch + 1)
        return metric >= cfg.target

    def _finish(self, code: int) -> None:
        time_to_train = self._elapsed()
        if code in (exit_codes.SUCCESS, exit_codes.NOT_REACHED):
            self.mllog.end("run_stop", metadata={"status": "success" if code == exit_codes.SUCCESS else "aborted"})
        if self.info.is_main:
            exit_codes.write_outcome(self.job_dir, code)
            say(f"[done] {exit_codes.DESCRIPTIONS.get(code, 'failed')}: time to train {time_to_train:.1f} s,"
                f" best {self.task.metric} {self.state['best_metric']:.4f}")
        if self.tracking:
            self.tracking.finish(code, time_to_train, self.state, self.mllog.path, self.task.unit,
                                 metric=self.task.metric, val_loader=self.val_loader)
        self.train_loader.close()
        self.val_loader.close()
        if self.hooks:
            self.hooks.finished(code, dict(self.state))
