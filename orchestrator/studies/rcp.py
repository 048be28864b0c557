"""MLPerf's reference convergence points (RCPs), read from the installed ``mlperf-logging``.

An RCP entry says how many epochs the reference ResNet-50 needed to reach 75.9% top-1 at a
global batch size, once per seed (``"Epochs to converge"``). They ship with the package
as ``mlperf_logging/rcp_checker/training_<round>/rcps_resnet.json`` (rounds 1.0.0 to
4.0.0 and later); nothing here is copied by hand. Rounds before 1.0 had no RCPs: their
lookups use the earliest set, and :func:`rcp_round` says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class ConvergencePoint:
    global_batch: int
    mean_epochs: float
    seeds: int


def _round_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split("."))


def _rcp_root() -> Path:
    """The package's ``rcp_checker`` folder.

    Raises:
        ConfigError: mlperf-logging is not installed.
    """
    try:
        return Path(str(resources.files("mlperf_logging") / "rcp_checker"))
    except ModuleNotFoundError:
        raise ConfigError("the predictor reads MLPerf's RCPs from mlperf-logging: pip install mlperf-logging") from None


@lru_cache(maxsize=8)  # the files of an installed package do not change while podrun runs
def rcp_rounds(benchmark: str = "resnet") -> list[str]:
    """Training rounds whose RCPs for ``benchmark`` are installed, oldest first (``["1.0.0", ...]``)."""
    found = [path.parent.name.removeprefix("training_")
             for path in _rcp_root().glob(f"training_*/rcps_{benchmark}.json")]
    return sorted(found, key=_round_key)


def rcp_round(requested: str | None, benchmark: str = "resnet") -> tuple[str, str]:
    """The round to read for ``requested`` (None: the newest), and a note when it is not that round.

    Raises:
        ConfigError: no RCPs for ``benchmark`` are installed, or ``requested`` is not a round.
    """
    rounds = rcp_rounds(benchmark)
    if not rounds:
        raise ConfigError(f"mlperf-logging ships no RCPs for {benchmark!r}")
    if requested is None:
        return rounds[-1], ""
    if not re.fullmatch(r"\d+(\.\d+){0,2}", requested):
        raise ConfigError(f"MLPerf round {requested!r}: give one like 3.1 or 3.1.0")
    requested = ".".join((requested.split(".") + ["0", "0"])[:3])  # 3.1 is 3.1.0
    if requested in rounds:
        return requested, ""
    earlier = [r for r in rounds if _round_key(r) <= _round_key(requested)]
    if earlier:
        return earlier[-1], f"no RCPs for round {requested}: used {earlier[-1]}"
    return rounds[0], f"round {requested} predates RCPs (they start at {rounds[0]}): used {rounds[0]}"


@lru_cache(maxsize=64)
def convergence_points(round_: str, benchmark: str = "resnet") -> list[ConvergencePoint]:
    """Each reference batch size of a round with the mean of its per-seed epochs to converge, by batch.

    Raises:
        ConfigError: the round's file is missing or malformed.
    """
    path = _rcp_root() / f"training_{round_}" / f"rcps_{benchmark}.json"
    try:
        entries = json.loads(path.read_text()).values()
        points = [ConvergencePoint(int(e["BS"]), sum(e["Epochs to converge"]) / len(e["Epochs to converge"]),
                                   len(e["Epochs to converge"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise ConfigError(f"{path}: not a readable RCP file ({exc})") from None
    return sorted(points, key=lambda point: point.global_batch)


def epochs_to_converge(global_batch: int, points: list[ConvergencePoint]) -> float:
    """Epochs at ``global_batch``, linear in the batch between the two nearest reference points.

    ``E(B) = E0 + (E1 - E0) (B - B0) / (B1 - B0)`` for ``B0 <= B <= B1``; below the smallest
    reference batch the smallest one's epochs (small batches converge no slower); above the
    largest, the line through the two largest continues.
    """
    if global_batch <= points[0].global_batch:
        return points[0].mean_epochs
    pairs = list(zip(points, points[1:]))
    low, high = next(((a, b) for a, b in pairs if global_batch <= b.global_batch), pairs[-1])
    slope = (high.mean_epochs - low.mean_epochs) / (high.global_batch - low.global_batch)
    return low.mean_epochs + slope * (global_batch - low.global_batch)
