"""The predictor against published MLPerf ResNet-50 results (docs/PREDICTION.md, tests/test_predict.py).

A results file (``bench/mlperf/resnet_results.yaml``, written by ``bench/mlperf/extract.py``
from the official logs) holds node types under ``hardware:`` (GPUs per node, NVLink, HCAs)
and published rows under ``results:``. The rows of one round on one node type are one
system: the model is calibrated on its smallest row only (one GPU's rate from the measured
step time, the eval rate from the measured evals) and predicts its other rows: epochs from
the RCPs at the row's global batch, the row's own global batch (MLPerf submissions shrink
the per-GPU batch as they grow), the fabric from the node type, and two constants for
every row: the per-step floor and the chunk the allreduce's tree forwards level by level
across nodes. MLPerf's clock starts at ``run_start``, so start-up is 0. Both constants are
fitted elsewhere (:mod:`orchestrator.studies.predict_validate`): never on the rows they
predict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from jobs.contract.config_io import read_yaml, validate
from orchestrator.errors import ConfigError
from orchestrator.studies.predict_model import Calibration, Fabric, Prediction, Workload, calibrate, predict_scale
from orchestrator.studies.rcp import convergence_points, epochs_to_converge, rcp_round

# the published results live in the repository (bench/mlperf), beside the script that extracted them
RESULTS_FILE = Path(__file__).resolve().parents[2] / "bench" / "mlperf" / "resnet_results.yaml"
RESNET50_PARAMETERS = 25_557_032  # ResNet-50 v1.5 (jobs/models/resnet.py builds the same; a test checks)
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000  # the logs' train_samples and eval_samples
MLPERF_EVAL_EVERY = 4  # epochs between evals in these submissions
FP16_BYTES = 2  # the MXNet submissions reduce fp16 gradients
HOP_US = 5.0  # one hop between nodes (InfiniBand through a switch or two)
MIB = 1024**2
FIRST_RCP_ROUND = (1, 0)  # rounds before 1.0 had no RCPs: reported, not counted
TOLERANCE = 0.20  # the goal: predicted within ±20% of published
WORKLOAD = Workload(items_per_epoch=IMAGENET_TRAIN, eval_items=IMAGENET_VAL,
                    grad_bytes=RESNET50_PARAMETERS * FP16_BYTES, eval_every=MLPERF_EVAL_EVERY)


def _round(value: object) -> str:
    """A round as written: 3.1, 3.1.0 or 4 (YAML reads an unquoted 3.1 as a number)."""
    text = str(value) if isinstance(value, (int, float)) else value
    if not isinstance(text, str) or not re.fullmatch(r"\d+(\.\d+){0,2}", text):
        raise ValueError("expected a round like 3.1 or 3.1.0")
    return text


Round = Annotated[str, BeforeValidator(_round)]


class NodeType(BaseModel):
    """A ``hardware:`` entry: what the allreduce model needs of one node."""

    model_config = ConfigDict(extra="ignore")
    gpus_per_node: int = Field(gt=0)
    nvlink_gbs: float = Field(gt=0)  # one GPU's NVLink (or PCIe) bandwidth, one way, GB/s
    hcas: int = Field(gt=0)
    link_gbps: float = Field(gt=0)  # one HCA, Gb/s
    gpu: str = ""
    source: str = ""


class ResultRow(BaseModel):
    """A ``results:`` entry: one published result (MLPerf's score of its five runs)."""

    model_config = ConfigDict(extra="ignore")
    round: Round
    system: str
    hardware: str
    nodes: int = Field(gt=0)
    global_batch: int = Field(gt=0)
    time_to_train_s: float = Field(gt=0)
    epochs: float = Field(gt=0)
    evals: float = Field(gt=0)
    eval_s: float = Field(ge=0)
    platform: str = ""
    submitter: str = ""
    stack: str = ""
    source: str = ""

    @property
    def round_key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.round.split(".") if part.isdigit())


class ResultsFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hardware: dict[str, NodeType]
    results: list[ResultRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_hardware(self) -> ResultsFile:
        for row in self.results:
            if row.hardware not in self.hardware:
                raise ValueError(f"result {row.system!r} (round {row.round}) names hardware {row.hardware!r}, "
                                 f"which is not under hardware: ({', '.join(sorted(self.hardware)) or 'none'})")
        return self


@dataclass(frozen=True)
class Check:
    """One published result and what the model says about it."""

    row: ResultRow
    gpus_per_node: int
    prediction: Prediction | None  # None: the row the system was calibrated on
    rcp_note: str
    measured_step_s: float
    floor_ms: float
    chunk_mib: float  # the tree's chunk across nodes (predict_model.tree_fill_seconds)
    error: float | None  # predicted / published - 1

    @property
    def counted(self) -> bool:
        """A predicted multi-node row of a round with RCPs: what the ±20% goal counts."""
        return self.multi_node and self.row.round_key >= FIRST_RCP_ROUND

    @property
    def multi_node(self) -> bool:
        return self.prediction is not None and self.row.nodes > 1


def load_results(path: Path = RESULTS_FILE) -> ResultsFile:
    """A results file, validated.

    Raises:
        ConfigError: the file is missing, not YAML, or a key is missing, malformed or names
            a node type that ``hardware:`` lacks (one line: the file and the key path).
    """
    return validate(ResultsFile, read_yaml(Path(path), expand=False), str(path))


def fabric_of(node: NodeType, chunk_mib: float = 0.0) -> Fabric:
    return Fabric(gpus_per_node=node.gpus_per_node, nvlink_bps=node.nvlink_gbs * 1e9,
                  network_bps=node.hcas * node.link_gbps / 8 * 1e9, hop_s=HOP_US * 1e-6,
                  tree_chunk_bytes=chunk_mib * MIB)


def measured_step_s(row: ResultRow) -> float:
    """``(T - eval time) / (E * ceil(items / B))``: the mean step of a published run."""
    steps = math.ceil(IMAGENET_TRAIN / row.global_batch)
    return (row.time_to_train_s - row.eval_s) / (row.epochs * steps)


def systems(results: ResultsFile) -> list[list[ResultRow]]:
    """The rows of each (round, node type), smallest first (ties keep the file's order)."""
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for row in results.results:
        groups.setdefault((row.round, row.hardware), []).append(row)
    return [sorted(rows, key=lambda r: r.nodes) for rows in groups.values()]


def calibrate_on(row: ResultRow, fabric: Fabric, floor_ms: float) -> Calibration:
    """A system's rates from its smallest row."""
    world = row.nodes * fabric.gpus_per_node
    return calibrate(row.global_batch / world, world, measured_step_s(row), row.eval_s / row.evals,
                     WORKLOAD, fabric, floor_ms / 1000, startup_s=0.0, source=row.system)


def check_system(rows: list[ResultRow], node: NodeType, floor_ms: float, chunk_mib: float = 0.0) -> list[Check]:
    """The first row as the calibration, the others predicted from it."""
    fabric = fabric_of(node, chunk_mib)
    try:
        cal = calibrate_on(rows[0], fabric, floor_ms)
    except ConfigError as exc:
        raise ConfigError(f"result {rows[0].system!r} (round {rows[0].round}): {exc}") from None
    round_, note = rcp_round(rows[0].round)
    checks = [Check(rows[0], node.gpus_per_node, None, note, measured_step_s(rows[0]), floor_ms, chunk_mib, None)]
    for row in rows[1:]:
        epochs = epochs_to_converge(row.global_batch, convergence_points(round_))
        found = predict_scale(row.nodes, node.gpus_per_node, row.global_batch, 0.0, (epochs, f"RCP {round_}"),
                              WORKLOAD, cal, fabric)
        checks.append(Check(row, node.gpus_per_node, found, note, measured_step_s(row), floor_ms, chunk_mib,
                            found.time_s / row.time_to_train_s - 1))
    return checks


def check_results(results: ResultsFile, floor_ms: float, chunk_mib: float = 0.0) -> list[Check]:
    """Every row with the same floor and chunk: the smallest of each system as calibration, the others predicted."""
    return [check for rows in systems(results)
            for check in check_system(rows, results.hardware[rows[0].hardware], floor_ms, chunk_mib)]


def within(checks: list[Check], tolerance: float = TOLERANCE) -> tuple[int, int]:
    """(rows within ``tolerance``, rows) over the counted rows (:attr:`Check.counted`)."""
    counted = [check for check in checks if check.counted]
    return sum(abs(check.error) <= tolerance for check in counted if check.error is not None), len(counted)


def markdown_table(checks: list[Check], floor_free: list[Check] | None = None) -> str:
    """The table of docs/PREDICTION.md: each row with its error and the terms that explain it.

    ``floor_free``: the same rows predicted with neither fitted constant (no floor, a chunk of
    0), in the same order (a last column).
    """
    head = ("| round | system | nodes x GPUs | global batch | published | predicted | error | floor ms | "
            "chunk MiB | epochs: RCP / run | step ms: model / run | neither |")
    lines = [head, "|" + " --- |" * 12]
    free = floor_free or [None] * len(checks)
    for check, other in zip(checks, free):
        row, found = check.row, check.prediction
        name = f"[{row.platform or row.system}]({row.source})" if row.source else row.platform or row.system
        ident = (f"{row.round} | {name} | {row.nodes} x {check.gpus_per_node} | {row.global_batch} | "
                 f"{row.time_to_train_s / 60:.2f} min")
        if found is None:
            lines.append(f"| {ident} | calibration | | {check.floor_ms:.1f} | {check.chunk_mib:g} | "
                         f"{row.epochs:.0f} (run) | "
                         f"{check.measured_step_s * 1000:.1f} (run) | |")
            continue
        no_floor = f"{other.error:+.1%}" if other is not None and other.error is not None else ""
        lines.append(f"| {ident} | {found.time_s / 60:.2f} min | {check.error:+.1%} | {check.floor_ms:.1f} | "
                     f"{check.chunk_mib:g} | "
                     f"{found.epochs:.1f} / {row.epochs:.0f} | {found.step_s * 1000:.1f} / "
                     f"{check.measured_step_s * 1000:.1f} | {no_floor} |")
    return "\n".join(lines)
