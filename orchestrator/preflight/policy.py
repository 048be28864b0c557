"""The launcher's side of preflight: what a job's nodes check, and what happens to a bad node.

A profile's ``preflight:`` section (:class:`orchestrator.spec.profiles.PreflightConfig`) turns the
checks on (by default for the slurm and ray backends), picks them and sets thresholds.
:func:`preflight_spec` turns it into the :class:`jobs.contract.preflight_spec.PreflightSpec` every
rank receives. When a node fails, :func:`decide` picks what to do:

* ``exclude_bad: true`` on Slurm, and enough healthy nodes left in the partition for the
  job's size: requeue the job with ``--exclude`` of every bad node so far (same size: a job
  never shrinks silently, that would change its global batch and learning rate);
* otherwise: stop before training, one line per bad node.

podrun never drains a node or changes the cluster: it says which node failed which check.
The Slurm side of the decision runs in the allocation: :mod:`orchestrator.preflight.slurm_gate`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jobs.preflight.record import format_excluded
from jobs.preflight.result import read_json, write_json
from orchestrator.spec import slurm_status

STATUS_FILE = "status.txt"
# sinfo %T states a job can be scheduled on (a trailing * means "not responding").
USABLE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned", "reserved"})


def usable(state: str) -> bool:
    """Whether Slurm can start a job on a node in ``state`` (``sinfo -o %T``)."""
    return state in USABLE_STATES  # "down*", "drained", "idle~" (powered off) ... are not


def parse_sinfo_nodes(text: str) -> dict[str, str]:
    """``sinfo -h -N -o '%N %T'`` as {node: state} (a node in several partitions appears once).

    Raises:
        SlurmOutputError: a line no Slurm release prints (the message names this one's version).
    """
    try:
        return slurm_status.parse_sinfo_nodes(text)
    except slurm_status.SlurmOutputError as exc:  # runs inside the job: this host's Slurm is the job's
        raise exc.on(slurm_status.ask_version(_run)) from None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@dataclass
class Excluded:
    """What earlier preflight runs of this job excluded (``<job_dir>/preflight/excluded.json``)."""

    nodes: dict[str, str] = field(default_factory=dict)  # node -> why
    requeues: int = 0

    @classmethod
    def load(cls, path: Path) -> Excluded:
        """The record at ``path``; an empty one when it is missing or unreadable."""
        data = read_json(path) or {}
        try:
            return cls(nodes={str(k): str(v) for k, v in dict(data.get("nodes") or {}).items()},
                       requeues=int(data.get("requeues", 0)))
        except (ValueError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        write_json(path, {"nodes": self.nodes, "requeues": self.requeues})

    def summary(self) -> str:
        """``node2 (storage: ...); node5 (gpu: ...)``, or ``none``."""
        return format_excluded(self.nodes)


@dataclass
class Decision:
    action: Literal["requeue", "stop"]
    message: str
    exclude: list[str] = field(default_factory=list)  # every node to exclude, earlier ones included


def decide(failures: dict[str, list[str]], *, exclude_bad: bool, can_exclude: bool, job_nodes: int,
           partition: dict[str, str], excluded: Excluded, max_requeues: int) -> Decision:
    """Requeue without the bad nodes, or stop before training (see the module docstring)."""
    bad = sorted(failures)
    if not bad:
        return Decision("stop", "preflight failed without naming a node (see the log above)")
    named = ", ".join(bad)
    if not can_exclude:
        return Decision("stop", f"{named} failed preflight; this backend cannot exclude nodes: "
                                "fix or remove them, then launch again")
    if not exclude_bad:
        return Decision("stop", f"{named} failed preflight; set preflight.exclude_bad: true in the profile "
                                "to requeue without them")
    if excluded.requeues >= max_requeues:
        return Decision("stop", f"{named} failed preflight after {excluded.requeues} requeue(s) "
                                f"(preflight.max_requeues {max_requeues}); not requeueing again")
    exclude = sorted(set(excluded.nodes) | set(bad))
    healthy = sorted(node for node, state in partition.items() if usable(state) and node not in exclude)
    if len(healthy) < job_nodes:
        return Decision("stop", f"{named} failed preflight and only {len(healthy)} healthy node(s) are left in the "
                                f"partition for a {job_nodes}-node job; not shrinking it (that would change the "
                                "global batch and learning rate)", exclude)
    return Decision("requeue", f"requeueing at {job_nodes} node(s) with --exclude={','.join(exclude)}", exclude)


def status_note(text: str | None) -> str:
    """The preflight line ``podrun status`` adds (from ``<job_dir>/preflight/status.txt``)."""
    return f"; {text.strip()}" if text and text.strip() else ""
