"""MLPerf Training logs (``:::MLLOG`` lines) for podrun's recipes, and the compliance check.

Only rank 0 writes. Each :class:`MlperfLogger` owns its own ``mllog.MLLogger`` and its
own ``logging.Logger``, so two loggers in one process (a test, a sweep) write to their
own files; ``mllog.config(filename=...)`` would add handlers to one shared logger and
every file would receive every line.

The training loop emits, in this order::

    init_start, cache_clear(True), log_submission(...), log_resnet_hparams(...), init_stop,
    run_start, then per epoch (1-based epoch_num):
        block_start(first_epoch_num=e, epoch_count=1), epoch_start(epoch_num=e),
        epoch_stop(epoch_num=e), eval_start(epoch_num=e),
        eval_accuracy(value, epoch_num=e), eval_stop(epoch_num=e),
        block_stop(first_epoch_num=e)
    run_stop(status='success' | 'aborted')

Check a finished log with :func:`run_compliance_checker` (or by hand with
``python -m mlperf_logging.compliance_checker --usage training --ruleset 3.1.0 <log>``).
"""

from __future__ import annotations

import itertools
import logging
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlperf_logging.mllog import constants as C
from mlperf_logging.mllog import mllog

from jobs.contract.job import Derivation
from jobs.contract.recipe import MlperfConfig, Recipe

DEFAULT_RULESET = "3.1.0"
CLOSED_END_LR = 0.0001  # closed_resnet_{sgd,lars}.yaml require exactly this end LR
CLOSED_LARS_POLY_POWER = 2.0

# closed_resnet_sgd.yaml names these; mllog.constants has no SGD_* names
SGD_OPT_BASE_LR = "sgd_opt_base_learning_rate"
SGD_OPT_END_LR = "sgd_opt_end_learning_rate"
SGD_OPT_LR_DECAY_POLY_POWER = "sgd_opt_learning_rate_decay_poly_power"
SGD_OPT_LR_DECAY_STEPS = "sgd_opt_learning_rate_decay_steps"
SGD_OPT_WEIGHT_DECAY = "sgd_opt_weight_decay"
SGD_OPT_MOMENTUM = "sgd_opt_momentum"

_logger_ids = itertools.count()


class MlperfLogger:
    """Writes MLPerf events to one file; a disabled logger (ranks other than 0) does nothing.

    ``append`` keeps an earlier attempt's lines when a job resumes after preemption: the
    resulting log then fails the checker (two ``run_start``), which is the honest outcome
    for a run that was interrupted.
    """

    def __init__(self, path: Path, enabled: bool = True, *, append: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._handler: logging.Handler | None = None
        self._mllog: mllog.MLLogger | None = None
        if enabled:
            self._open(append)

    def _open(self, append: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        logger = logging.getLogger(f"podrun.mllog.{next(_logger_ids)}")
        logger.propagate = False  # the lines go to the file only, not to the app's handlers
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.path, mode="a" if append else "w")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(self._handler)
        # offset 2: report the caller of event()/start()/end(), not this module
        self._mllog = mllog.MLLogger(logger=logger, default_stack_offset=2)

    def event(self, key: str, value: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Log a point-in-time event such as ``eval_accuracy``."""
        if self._mllog is not None:
            self._mllog.event(key, _plain(value), metadata=_plain_dict(metadata))
            self._handler.flush()

    def start(self, key: str, value: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Open an interval such as ``run_start`` or ``epoch_start``."""
        if self._mllog is not None:
            self._mllog.start(key, _plain(value), metadata=_plain_dict(metadata))
            self._handler.flush()

    def end(self, key: str, value: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Close an interval such as ``run_stop`` or ``epoch_stop``."""
        if self._mllog is not None:
            self._mllog.end(key, _plain(value), metadata=_plain_dict(metadata))
            self._handler.flush()

    def close(self) -> None:
        """Flush and close the file; later calls do nothing."""
        if self._mllog is not None and self._handler is not None:
            self._mllog.logger.removeHandler(self._handler)
            self._handler.close()
        self._mllog = None
        self._handler = None

    def __enter__(self) -> MlperfLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """Turn tensors and numpy scalars into plain Python numbers (mllog encodes JSON)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return value


def _plain_dict(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    return {key: _plain(value) for key, value in metadata.items()}


def log_submission(logger: MlperfLogger, cfg: MlperfConfig, platform: str) -> None:
    """Log the ``submission_*`` events; ``platform`` is the system's name (e.g. ``1xH100``).

    Log these before ``init_stop``: the checker's init-time limit is set by the division.
    """
    logger.event(C.SUBMISSION_BENCHMARK, cfg.benchmark)
    logger.event(C.SUBMISSION_ORG, cfg.org)
    logger.event(C.SUBMISSION_DIVISION, cfg.division)
    logger.event(C.SUBMISSION_STATUS, cfg.status)
    # the checker rejects an empty platform
    logger.event(C.SUBMISSION_PLATFORM, platform or "unknown")


def decay_steps(recipe: Recipe, derived: Derivation, steps_per_epoch: int) -> int:
    """Steps of the LR decay phase: all training steps after the warmup."""
    total = recipe.train.epochs * steps_per_epoch
    warmup = round(derived.warmup_epochs * steps_per_epoch)
    return max(total - warmup, 0)


def log_resnet_hparams(
    logger: MlperfLogger,
    recipe: Recipe,
    derived: Derivation,
    *,
    train_samples: int,
    eval_samples: int,
    steps_per_epoch: int,
) -> None:
    """Log the ResNet hyperparameters the 3.1.0 ruleset asks for (SGD or LARS keys)."""
    logger.event(C.SEED, recipe.train.seed)
    logger.event(C.GLOBAL_BATCH_SIZE, derived.global_batch_size)
    logger.event(C.GRADIENT_ACCUMULATION_STEPS, 1)
    logger.event(C.OPT_NAME, derived.optimizer)
    steps = decay_steps(recipe, derived, steps_per_epoch)
    if derived.optimizer == C.LARS:
        _log_lars(logger, recipe, derived, steps)
    else:
        _log_sgd(logger, recipe, derived, steps)
    logger.event(C.MODEL_BN_SPAN, derived.batch_size)
    logger.event(C.TRAIN_SAMPLES, train_samples)
    logger.event(C.EVAL_SAMPLES, eval_samples)


def _log_sgd(logger: MlperfLogger, recipe: Recipe, derived: Derivation, steps: int) -> None:
    logger.event(SGD_OPT_BASE_LR, derived.lr)
    logger.event(SGD_OPT_END_LR, recipe.optim.end_lr)
    logger.event(SGD_OPT_LR_DECAY_POLY_POWER, recipe.schedule.poly_power)
    logger.event(SGD_OPT_LR_DECAY_STEPS, steps)
    logger.event(SGD_OPT_WEIGHT_DECAY, recipe.optim.weight_decay)
    logger.event(SGD_OPT_MOMENTUM, recipe.optim.momentum)
    logger.event(C.OPT_LR_WARMUP_EPOCHS, derived.warmup_epochs)


def _log_lars(logger: MlperfLogger, recipe: Recipe, derived: Derivation, steps: int) -> None:
    logger.event(C.LARS_OPT_BASE_LEARNING_RATE, derived.lr)
    logger.event(C.LARS_OPT_END_LR, recipe.optim.end_lr)
    logger.event(C.LARS_OPT_LR_DECAY_POLY_POWER, recipe.schedule.poly_power)
    logger.event(C.LARS_OPT_LR_DECAY_STEPS, steps)
    logger.event(C.LARS_EPSILON, 0.0)
    logger.event(C.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, derived.warmup_epochs)
    logger.event(C.LARS_OPT_MOMENTUM, recipe.optim.momentum)
    logger.event(C.LARS_OPT_WEIGHT_DECAY, recipe.optim.weight_decay)


def closed_division_problems(recipe: Recipe, derived: Derivation) -> list[str]:
    """Reasons the closed-division checker will reject this recipe's log (empty if none).

    Call it before training so a closed run that can never be compliant is flagged early.
    """
    optim, problems = recipe.optim, []
    if recipe.schedule.decay != "poly":
        problems.append(f"schedule.decay is {recipe.schedule.decay!r}; closed ResNet uses 'poly'")
    if derived.optimizer not in (C.SGD, C.LARS):
        problems.append(f"optimizer {derived.optimizer!r} is neither 'sgd' nor 'lars'")
    if optim.end_lr != CLOSED_END_LR:
        problems.append(f"optim.end_lr is {optim.end_lr}; closed requires {CLOSED_END_LR}")
    if not _power_of_two_multiple(optim.weight_decay, 1e-4):
        problems.append(
            f"optim.weight_decay is {optim.weight_decay}; closed requires 1e-4 times a power "
            "of two (e.g. 5e-05, 0.0001)"
        )
    if derived.optimizer == C.SGD and not _is_integer(derived.lr / 0.001):
        problems.append(f"SGD base LR {derived.lr} is not a multiple of 0.001")
    if derived.optimizer == C.LARS and recipe.schedule.poly_power != CLOSED_LARS_POLY_POWER:
        problems.append(f"schedule.poly_power is {recipe.schedule.poly_power}; LARS requires 2")
    return problems


def _is_integer(value: float) -> bool:
    # the checker's own tolerance (mlp_compliance.is_integer)
    return abs(round(value) - value) < 0.00001


def _power_of_two_multiple(value: float, unit: float) -> bool:
    return value > 0 and _is_integer(math.log2(value / unit))


def run_compliance_checker(log_path: Path, ruleset: str = DEFAULT_RULESET) -> tuple[bool, str]:
    """Run the MLPerf Training compliance checker on ``log_path``.

    Returns:
        ``(passed, output)``: whether the checker printed SUCCESS and exited 0, and its
        combined stdout/stderr. Never raises for a bad log; a missing file simply fails.
    """
    with tempfile.TemporaryDirectory(prefix="podrun-mlperf-") as tmp:
        # the checker writes its own log file; keep it out of the caller's cwd
        command = [
            sys.executable, "-m", "mlperf_logging.compliance_checker",
            "--usage", "training", "--ruleset", ruleset,
            "--log_output", str(Path(tmp) / "compliance_checker.log"),
            str(log_path),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"compliance checker did not run: {exc}"
    output = done.stdout + done.stderr
    return done.returncode == 0 and "SUCCESS" in output, output
