"""What a training run records about the preflight before it, in MLflow.

Rank 0 reads ``<job_dir>/preflight/``: the latest report (its duration becomes the metric
``phase_preflight_s``, the preflight phase of the run), the nodes excluded on the way
(tag ``preflight.excluded``: ``node2 (storage: ...)`` or ``none``), and every attempt's
table (artifacts under ``preflight/``), so a run that was requeued without a bad node
shows why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.preflight.result import REPORT_TXT, read_json, read_report

EXCLUDED_FILE = "excluded.json"  # written by the launcher's gate (orchestrator.preflight.slurm_gate)


@dataclass
class PreflightRecord:
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file, artifact folder)


def format_excluded(nodes: dict[str, str]) -> str:
    """``node2 (storage: ...); node5 (gpu: ...)``, or ``none``."""
    return "; ".join(f"{node} ({why})" for node, why in sorted(nodes.items())) or "none"


def excluded_summary(folder: Path) -> str:
    """The nodes the gate excluded (its ``excluded.json``), formatted."""
    return format_excluded((read_json(Path(folder) / EXCLUDED_FILE) or {}).get("nodes") or {})


def preflight_record(job_dir: Path) -> PreflightRecord | None:
    """The tags, metrics and artifacts of the job's preflight, or None when it ran none."""
    folder = Path(job_dir) / "preflight"
    report = read_report(folder)
    if report is None:
        return None
    found = PreflightRecord(tags={"preflight.excluded": excluded_summary(folder),
                                  "preflight.result": "passed" if report.ok else "failed"})
    if report.duration_s is not None:
        found.metrics["phase_preflight_s"] = report.duration_s
    if report.busbw_gbps is not None:
        found.metrics["preflight_busbw_gbps"] = report.busbw_gbps
    found.artifacts.append((folder / REPORT_TXT, "preflight"))
    found.artifacts += [(table, f"preflight/{table.parent.name}") for table in sorted(folder.glob(f"*/{REPORT_TXT}"))]
    return found


def log_preflight(tracker: Any, job_dir: Path, step: int) -> None:
    """Send the job's preflight record through rank 0's tracker (nothing when no preflight ran)."""
    found = preflight_record(job_dir)
    if found is None:
        return
    tracker.set_tags(found.tags)
    if found.metrics:
        tracker.log_metrics(found.metrics, step=step)
    for path, folder in found.artifacts:
        tracker.log_artifact(path, folder)
