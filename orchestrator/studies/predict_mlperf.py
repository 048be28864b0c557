"""The predictor against published MLPerf ResNet-50 results (docs/PREDICTION.md, tests/test_predict.py).

``bench/mlperf/resnet_results.yaml`` holds NVIDIA's closed-division ResNet-50 results of
MLPerf Training v0.6 (DGX-1, DGX-2H), v2.0 (DGX A100) and v3.0 (DGX H100), extracted from
the official logs by ``bench/mlperf/extract.py``. For each system the model is calibrated
on its 1-node result only (one GPU's rate from the measured step time, the eval rate from
the measured evals) and predicts every multi-node result of the same system: epochs from
the RCPs at the row's global batch, the row's own global batch (MLPerf submissions shrink
the per-GPU batch as they grow), the fabric from the system sheet, and the same per-step
floor for every row. MLPerf's clock starts at ``run_start``, so start-up is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.config_io import read_yaml
from orchestrator.studies.predict_model import Calibration, Fabric, Prediction, Workload, calibrate, predict_scale
from orchestrator.studies.rcp import convergence_points, epochs_to_converge, rcp_round

# the published results live in the repository (bench/mlperf), beside the script that extracted them
RESULTS_FILE = Path(__file__).resolve().parents[2] / "bench" / "mlperf" / "resnet_results.yaml"
RESNET50_PARAMETERS = 25_557_032  # ResNet-50 v1.5 (jobs/models/resnet.py builds the same; a test checks)
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000  # the logs' train_samples and eval_samples
MLPERF_EVAL_EVERY = 4  # epochs between evals in these submissions
FP16_BYTES = 2  # the MXNet submissions reduce fp16 gradients
STEP_FLOOR_MS = 5.0  # one constant for every row and GPU generation (see docs/PREDICTION.md)


@dataclass
class Check:
    """One published result and what the model says about it."""

    row: dict[str, Any]
    prediction: Prediction | None  # None: the calibration row itself
    rcp_note: str
    measured_step_s: float
    error: float | None  # predicted / published - 1


def load_results(path: Path = RESULTS_FILE) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The hardware sheets and the result rows."""
    data = read_yaml(path)
    return data["hardware"], data["results"]


def fabric_of(hardware: dict[str, Any], hop_us: float = 5.0) -> Fabric:
    return Fabric(gpus_per_node=hardware["gpus_per_node"], nvlink_bps=hardware["nvlink_gbs"] * 1e9,
                  network_bps=hardware["hcas"] * hardware["link_gbps"] / 8 * 1e9, hop_s=hop_us * 1e-6)


WORKLOAD = Workload(items_per_epoch=IMAGENET_TRAIN, eval_items=IMAGENET_VAL,
                    grad_bytes=RESNET50_PARAMETERS * FP16_BYTES, eval_every=MLPERF_EVAL_EVERY)


def measured_step_s(row: dict[str, Any]) -> float:
    """``(T - eval time) / (E * ceil(items / B))``: the mean step of a published run."""
    steps = math.ceil(IMAGENET_TRAIN / row["global_batch"])
    return (row["time_to_train_s"] - row["eval_s"]) / (row["epochs"] * steps)


def calibrate_on(row: dict[str, Any], fabric: Fabric, floor_ms: float) -> Calibration:
    """A system's rates from its 1-node row."""
    world = row["nodes"] * fabric.gpus_per_node
    return calibrate(row["global_batch"] / world, world, measured_step_s(row), row["eval_s"] / row["evals"],
                     WORKLOAD, fabric, floor_ms / 1000, startup_s=0.0, source=row["system"])


def check_results(path: Path = RESULTS_FILE, floor_ms: float = STEP_FLOOR_MS) -> list[Check]:
    """Every row, the 1-node rows as calibrations and the others predicted from them."""
    hardware, rows = load_results(path)
    checks = []
    for kind, sheet in hardware.items():
        system_rows = sorted((r for r in rows if r["hardware"] == kind), key=lambda r: r["nodes"])
        fabric = fabric_of(sheet)
        cal = calibrate_on(system_rows[0], fabric, floor_ms)
        for row in system_rows:
            round_, note = rcp_round(row["round"] + ".0")
            if row is system_rows[0]:
                checks.append(Check(row, None, note, measured_step_s(row), None))
                continue
            epochs = epochs_to_converge(row["global_batch"], convergence_points(round_))
            found = predict_scale(row["nodes"], fabric.gpus_per_node, row["global_batch"], 0.0,
                                  (epochs, f"RCP {round_}"), WORKLOAD, cal, fabric)
            checks.append(Check(row, found, note, measured_step_s(row), found.time_s / row["time_to_train_s"] - 1))
    return checks


def markdown_table(checks: list[Check], floor_free: list[Check] | None = None) -> str:
    """The table of docs/PREDICTION.md: each row with its error and the terms that explain it."""
    head = ("| round | system (submitter NVIDIA) | nodes x GPUs | global batch | published | predicted | error | "
            "epochs: RCP / run | step ms: model / run | no floor |")
    lines = [head, "|" + " --- |" * 10]
    free = {c.row["system"]: c for c in floor_free or []}
    for check in checks:
        row, found = check.row, check.prediction
        gpus = row["nodes"] * (found.gpus // found.nodes if found else _gpus_per_node(row))
        ident = f"{row['round']} | [{row['platform']}]({row['source']}) | {row['nodes']} x {gpus // row['nodes']} | "
        ident += f"{row['global_batch']} | {row['time_to_train_s'] / 60:.2f} min"
        if found is None:
            lines.append(f"| {ident} | calibration | | {row['epochs']:.0f} (run) | {check.measured_step_s * 1000:.1f}"
                         f" (run) | |")
            continue
        other = free.get(row["system"])
        no_floor = f"{other.error:+.0%}" if other and other.error is not None else ""
        lines.append(f"| {ident} | {found.time_s / 60:.2f} min | {check.error:+.0%} | {found.epochs:.1f} / "
                     f"{row['epochs']:.0f} | {found.step_s * 1000:.1f} / {check.measured_step_s * 1000:.1f} | "
                     f"{no_floor} |")
    return "\n".join(lines)


def _gpus_per_node(row: dict[str, Any]) -> int:
    hardware, _ = load_results()
    return hardware[row["hardware"]]["gpus_per_node"]


if __name__ == "__main__":  # python -m orchestrator.studies.predict_mlperf: the table of docs/PREDICTION.md
    print(markdown_table(check_results(), check_results(floor_ms=0.0)))
