"""What a Slurm job does after its preflight step failed: requeue without the bad nodes, or stop.

The sbatch script runs it in the batch shell (``python -m orchestrator.preflight.slurm_gate``)
when ``python -m jobs.preflight`` exited non-zero. It reads this attempt's report, asks
``sinfo`` which nodes of the partition are usable and decides (:func:`orchestrator.preflight.policy.decide`).
A requeue is ``scontrol requeue`` followed by ``scontrol update ExcNodeList=<bad nodes>
StartTime=now+5``: a running job's excluded nodes cannot be changed, a requeued (pending)
one's can, and a begin time in the future also keeps Slurm's two-minute requeue hold off.
It exits 0 after a requeue and :data:`jobs.contract.exit_codes.PREFLIGHT_FAILED` when the job stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from jobs.contract import exit_codes
from jobs.contract.job import apply_array_task, load_resolved
from jobs.preflight.node import attempt_name, preflight_dir
from jobs.preflight.record import EXCLUDED_FILE
from jobs.preflight.result import read_report
from orchestrator.errors import PodrunError
from orchestrator.preflight.policy import STATUS_FILE, Decision, Excluded, decide, parse_sinfo_nodes


def say(message: str) -> None:
    print(f"[preflight] {message}", flush=True)


def slurm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def job_reference(env: dict[str, str]) -> str:
    """The id ``scontrol`` knows this job (or array task) by."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def partition_nodes(partition: str) -> dict[str, str]:
    """Every node of the job's partition and its state."""
    argv = ["sinfo", "-h", "-N", "-o", "%N %T"] + (["-p", partition] if partition else [])
    result = slurm(*argv)
    return parse_sinfo_nodes(result.stdout) if result.returncode == 0 else {}


def requeue(job_ref: str, exclude: list[str]) -> str | None:
    """Requeue the job and exclude ``exclude``; None, or what went wrong."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue signals this job's processes, us too
    done = slurm("scontrol", "requeue", job_ref)
    if done.returncode != 0:
        return f"scontrol requeue {job_ref}: {done.stderr.strip() or done.stdout.strip()}"
    update = slurm("scontrol", "update", f"JobId={job_ref}", f"ExcNodeList={','.join(exclude)}", "StartTime=now+5")
    if update.returncode != 0:
        return f"scontrol update ExcNodeList: {update.stderr.strip() or update.stdout.strip()}"
    return None


def record(folder: Path, excluded: Excluded, decision: Decision, reasons: dict[str, list[str]]) -> None:
    """Keep the excluded nodes (for the next attempt, MLflow and ``podrun status``) and a status line."""
    if decision.action == "requeue":
        for node in decision.exclude:
            excluded.nodes.setdefault(node, "; ".join(reasons.get(node, ["excluded earlier"])))
        excluded.requeues += 1
        line = f"preflight excluded {excluded.summary()}; requeued"
    else:
        line = f"preflight stopped the job: {decision.message}"
    excluded.save(folder / EXCLUDED_FILE)
    (folder / STATUS_FILE).write_text(line + "\n")


def gate(config: Path, nodes: int, exclude_bad: bool, max_requeues: int, env: dict[str, str]) -> int:
    """Decide and act; returns the batch script's exit code."""
    job = apply_array_task(load_resolved(config), env)
    folder = preflight_dir(job)
    report = read_report(folder / attempt_name(env))
    if report is None:
        say("the preflight step left no report (it crashed: see above); stopping before training")
        return exit_codes.PREFLIGHT_FAILED
    failures = report.failures()  # the step printed them, one line per node
    excluded = Excluded.load(folder / EXCLUDED_FILE)
    decision = decide(failures, exclude_bad=exclude_bad, can_exclude=True, job_nodes=nodes,
                      partition=partition_nodes(env.get("SLURM_JOB_PARTITION", "")), excluded=excluded,
                      max_requeues=max_requeues)
    record(folder, excluded, decision, failures)
    say(decision.message)
    if decision.action == "requeue":
        problem = requeue(job_reference(env), decision.exclude)
        if problem is None:
            return exit_codes.SUCCESS
        say(f"requeue failed ({problem}); stopping before training")
        (folder / STATUS_FILE).write_text(f"preflight stopped the job: requeue failed ({problem})\n")
    return exit_codes.PREFLIGHT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.preflight.slurm_gate")
    parser.add_argument("config", type=Path)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--exclude-bad", action="store_true")
    parser.add_argument("--max-requeues", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        return gate(args.config, args.nodes, args.exclude_bad, args.max_requeues, dict(os.environ))
    except PodrunError as exc:
        say(f"error: {exc}")
        return exit_codes.PREFLIGHT_FAILED


if __name__ == "__main__":
    sys.exit(main())
