"""``podrun preflight JOB``: run only the preflight of a job, on the nodes it would get, and print the table.

The job is submitted as usual (a Slurm allocation of the job's size, a Ray job, or the
local supervisor) with ``PODRUN_PREFLIGHT_ONLY=1`` in its environment, so it stops after
the checks; it is a job of its own (``<name>-preflight-...``) in ``podrun runs``. The
checks run even where the profile turns preflight off. Exit status: 0 when every node
passed, :data:`jobs.contract.exit_codes.PREFLIGHT_FAILED` when one failed, 1 when no report came back.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobs.contract import exit_codes
from jobs.preflight.result import REPORT_JSON, Report
from orchestrator.backends import get_backend
from orchestrator.backends.base import Backend
from orchestrator.spec.jobspec import LaunchPlan
from orchestrator.spec.jobstore import JobRecord, is_terminal
from orchestrator.spec.profiles import preflight_spec

PREFLIGHT_ONLY = "PODRUN_PREFLIGHT_ONLY"
POLL_S = 2.0


def preflight_job_id(ref: str, assignments: list[str]) -> str:
    """A job id of its own: ``<job name>-preflight-<time>-<hex>``."""
    from orchestrator.spec.resolve import load_job_spec, new_job_id

    spec, _, _ = load_job_spec(ref, assignments)
    return new_job_id(f"{spec.name}-preflight")


def preflight_plan(plan: LaunchPlan) -> LaunchPlan:
    """The plan that runs the checks and nothing else."""
    plan = plan.model_copy(deep=True)
    plan.job.preflight = preflight_spec(plan.profile, plan.backend, force=True)
    plan.profile.env[PREFLIGHT_ONLY] = "1"
    return plan


def read_remote_report(backend: Backend, plan: LaunchPlan, record: JobRecord) -> Report | None:
    """The report the job wrote (on the cluster, through the login node when there is one)."""
    path = Path(record.extra.get("cluster_job_dir", plan.job.job_dir)) / "preflight" / REPORT_JSON
    if backend.name == "slurm":
        text = backend.tunnel(plan.profile.slurm.login).read_text(str(path))  # type: ignore[attr-defined]
    else:
        text = path.read_text() if path.is_file() else None
    try:
        return Report.from_json(text) if text else None
    except ValueError:
        return None


def run_preflight(plan: LaunchPlan, scheduler: str) -> int:
    """Submit the preflight-only job, wait for it, print the table; returns the exit status."""
    plan = preflight_plan(plan)
    backend = get_backend(scheduler)
    record = backend.submit(plan)
    print(f"preflight {record.job_id} ({record.backend} {record.native_id}): checking {plan.job.nodes} node(s)",
          flush=True)
    while not is_terminal((record := backend.status(record)).state):
        time.sleep(POLL_S)
    report = read_remote_report(backend, plan, record)
    if report is None:
        tail = list(backend.logs(record))[-40:]
        print("\n".join(tail))
        print(f"preflight {record.job_id}: no report came back ({record.state}: {record.detail})")
        return exit_codes.FAILED
    print(report.table(), end="")
    for node, reasons in report.failures().items():
        print(f"{node}: FAIL {'; '.join(reasons)}")
    return exit_codes.SUCCESS if report.ok else exit_codes.PREFLIGHT_FAILED
