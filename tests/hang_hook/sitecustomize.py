"""Test-only (tests/test_hangs.py): hold one rank in a Python sleep inside its training step.

Python imports ``sitecustomize`` at start-up from any folder on ``PYTHONPATH``; the hang test
puts this folder there. It does nothing unless ``$PODRUN_TEST_SLEEP_RANK`` names this
process's ``RANK``. Then, once ``jobs.train`` is imported, that rank's ``Trainer._micro_step``
of micro-batch ``$PODRUN_TEST_SLEEP_AT`` (the run's count, from 0) first sleeps
``$PODRUN_TEST_SLEEP_S`` seconds in :func:`sleep_in_step`: alive, its watchdog thread
running, but not in the collective the other ranks wait in. podrun's own code has no hook.
"""

from __future__ import annotations

import os
import sys
import time
from importlib.machinery import PathFinder
from typing import Any


def sleep_in_step(seconds: float) -> None:
    time.sleep(seconds)  # the line the hang test finds in this rank's stack


def hold(trainer_class: Any, at: int, seconds: float) -> None:
    original = trainer_class._micro_step

    def _micro_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.watchdog.position == at:
            sleep_in_step(seconds)
        return original(self, *args, **kwargs)

    trainer_class._micro_step = _micro_step


class _PatchTrainer:
    """A finder that lets ``jobs.train`` load as usual, then holds its Trainer (see :func:`hold`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "jobs.train":
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            hold(module.Trainer, int(os.environ["PODRUN_TEST_SLEEP_AT"]), float(os.environ["PODRUN_TEST_SLEEP_S"]))

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PODRUN_TEST_SLEEP_RANK") is not None and \
        os.environ.get("PODRUN_TEST_SLEEP_RANK") == os.environ.get("RANK"):
    sys.meta_path.insert(0, _PatchTrainer())
