"""A check's outcome, the node x check report and its table.

A check says ``pass``, ``FAIL: <why>`` or ``skipped: <why>``; a check that cannot apply
(no GPUs in the profile, one node only) is skipped, never passed. The report is written
as JSON (``report.json``, what the launcher and MLflow read) and as a table
(``report.txt``, what the job log, ``podrun preflight`` and the MLflow artifact show).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from jobs.contract.checkpoint_index import atomic_write_bytes
from jobs.contract.preflight_spec import CHECKS

Status = Literal["pass", "FAIL", "skipped"]
REPORT_JSON, REPORT_TXT = "report.json", "report.txt"
FAILED_NODES = "failed-nodes.txt"


@dataclass(frozen=True)
class CheckResult:
    status: Status
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def passed(detail: str = "") -> CheckResult:
    return CheckResult("pass", detail)


def failed(detail: str) -> CheckResult:
    return CheckResult("FAIL", detail)


def skipped(detail: str) -> CheckResult:
    return CheckResult("skipped", detail)


def combine(*results: CheckResult) -> CheckResult:
    """One cell from several parts: FAIL if any failed, pass if any passed, else skipped."""
    for status in ("FAIL", "pass", "skipped"):
        parts = [r.detail for r in results if r.status == status and r.detail]
        if any(r.status == status for r in results):
            return CheckResult(status, "; ".join(parts))  # type: ignore[arg-type]
    return skipped("nothing to check")


def outliers(values: dict[str, str], what: str) -> dict[str, str]:
    """Nodes whose ``what`` differs from the majority's, with the reason; every node on a tie.

    ``{"node1": "535.104", "node2": "535.104", "node3": "550.54"}`` names node3 only.
    """
    counts = Counter(values.values())
    if len(counts) <= 1:
        return {}
    (top, top_count), (_, second_count) = counts.most_common(2)
    if top_count == second_count:  # no majority: nobody can say which is right
        shown = ", ".join(f"{node} {value}" for node, value in sorted(values.items()))
        return {node: f"{what} differs across nodes ({shown})" for node in values}
    return {node: f"{what} {value} (the other nodes: {top})" for node, value in values.items() if value != top}


@dataclass
class Report:
    """The node x check outcome of one preflight run."""

    nodes: list[str]
    results: dict[str, dict[str, CheckResult]] = field(default_factory=dict)
    busbw_gbps: float | None = None
    duration_s: float | None = None
    attempt: str = ""

    def cell(self, node: str, check: str) -> CheckResult:
        return self.results.get(node, {}).get(check) or failed("no result (the node sent no report)")

    def failures(self) -> dict[str, list[str]]:
        """Each failing node's reasons, ``"<check>: <why>"``."""
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            reasons = [f"{check}: {self.cell(node, check).detail}" for check in CHECKS if self.cell(node, check).failed]
            if reasons:
                found[node] = reasons
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def table(self) -> str:
        """The node x check table, one row per node."""
        header = ["node", *CHECKS]
        rows = [[node, *(str(self.cell(node, check)) for check in CHECKS)] for node in self.nodes]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in [header, *rows]]
        summary = "all nodes passed" if self.ok else f"{len(self.failures())} of {len(self.nodes)} node(s) FAILED"
        timing = f" in {self.duration_s:.1f} s" if self.duration_s is not None else ""
        return "\n".join([*lines, f"preflight {summary}{timing}"]) + "\n"

    def to_json(self) -> str:
        data = asdict(self)
        data["results"] = {n: {c: asdict(r) for c, r in checks.items()} for n, checks in self.results.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Read :meth:`to_json`'s text.

        Raises:
            ValueError: the text is not a preflight report.
        """
        data = json.loads(text)
        try:
            results = {n: {c: CheckResult(**r) for c, r in checks.items()} for n, checks in data["results"].items()}
            return cls(nodes=list(data["nodes"]), results=results, busbw_gbps=data.get("busbw_gbps"),
                       duration_s=data.get("duration_s"), attempt=data.get("attempt", ""))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a preflight report: {exc}") from None

    def write(self, folder: Path) -> None:
        """Write ``report.json``, ``report.txt`` and ``failed-nodes.txt`` (one node a line, for the batch
        script's restart) into ``folder``, each whole or not at all."""
        failed_nodes = "".join(f"{node}\n" for node in sorted(self.failures()))
        for name, text in ((REPORT_JSON, self.to_json()), (REPORT_TXT, self.table()), (FAILED_NODES, failed_nodes)):
            atomic_write_bytes(Path(folder) / name, lambda handle, text=text: handle.write(text.encode()))


def read_report(folder: Path) -> Report | None:
    """The report in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        return Report.from_json((Path(folder) / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON, atomically (other nodes read these files on shared storage)."""
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def node_file(folder: Path, node: str) -> Path:
    """Where ``node`` leaves its local results (a name safe for a file)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node)
    return Path(folder) / f"node-{safe}.json"

