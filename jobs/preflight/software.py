"""The software check: the same podrun, torch, NCCL and Python on every node, and clocks that agree.

podrun is identified by its version and a digest of its own source files (``jobs/`` and
``orchestrator/``), so two checkouts at different commits, or a container built from an
older one, differ even without git. Versions are compared across nodes by majority
(:func:`jobs.preflight.result.outliers`). Clock offsets come from the collectives phase
(:func:`jobs.preflight.collectives.clock_offsets`): each node's clock minus the median.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
from importlib import metadata
from pathlib import Path

from jobs.preflight.result import CheckResult, failed, outliers, passed, skipped

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("jobs", "orchestrator")


def podrun_identity(root: Path = PACKAGE_ROOT) -> str:
    """``<version>+<digest of the source files>``, e.g. ``0.1.0+3f2a9c1e``."""
    digest = hashlib.sha256()
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    try:
        version = metadata.version("podrun")
    except metadata.PackageNotFoundError:
        version = "0+src"
    return f"{version}+{digest.hexdigest()[:8]}"


def software_versions() -> dict[str, str]:
    """This node's podrun, torch, NCCL and Python versions (imports torch)."""
    import torch

    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "n/a (no GPU)"
    return {"podrun": podrun_identity(), "torch": torch.__version__, "nccl": nccl,
            "python": platform.python_version()}


def compare_versions(by_node: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Each node's version differences from the majority, as phrases (nodes without any are left out)."""
    found: dict[str, list[str]] = {}
    names = sorted({name for versions in by_node.values() for name in versions})
    for name in names:
        values = {node: versions.get(name, "missing") for node, versions in by_node.items()}
        for node, reason in outliers(values, name).items():
            found.setdefault(node, []).append(reason)
    return found


def clock_problems(offsets: dict[str, float], max_skew_s: float) -> dict[str, str]:
    """Nodes whose clock is more than ``max_skew_s`` from the median of all nodes."""
    if len(offsets) < 2:
        return {}
    median = statistics.median(offsets.values())
    return {node: f"clock {offset - median:+.3f} s off the others (max {max_skew_s:g} s)"
            for node, offset in offsets.items() if abs(offset - median) > max_skew_s}


def evaluate_software(node: str, by_node: dict[str, dict[str, str]], offsets: dict[str, float] | None,
                      max_skew_s: float) -> CheckResult:
    """One node's cell: its versions against the majority's, its clock against the median."""
    own = by_node.get(node)
    if own is None:
        return failed("no versions reported")
    if len(by_node) < 2:
        return skipped(f"one node, nothing to compare (torch {own.get('torch')}, python {own.get('python')})")
    problems = compare_versions(by_node).get(node, [])
    if offsets is None:
        problems.append("clock skew not measured (no process group)")
    elif node in clock_problems(offsets, max_skew_s):
        problems.append(clock_problems(offsets, max_skew_s)[node])
    if problems:
        return failed("; ".join(problems))
    skew = max(offsets.values()) - min(offsets.values()) if offsets else 0.0
    return passed(f"same versions (torch {own.get('torch')}), clocks within {skew:.3f} s")
