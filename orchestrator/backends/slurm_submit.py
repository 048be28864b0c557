"""``sbatch`` exactly once, over a connection that may drop.

If the SSH connection drops while ``sbatch`` runs, its reply (Slurm's job id) is lost, but
the job may well be queued. So every submission carries podrun's own job id in the Slurm
job's comment (``--comment=podrun:<id>``), and before it submits again, :func:`submit_once`
asks Slurm whether a job with that comment exists; if so it takes that job's id instead
of queueing a second one.
"""

from __future__ import annotations

import sys
import time

from orchestrator.backends.ssh_retry import ConnectionLost
from orchestrator.backends.tunnel import CommandResult, Tunnel
from orchestrator.errors import BackendError
from orchestrator.spec.slurm_status import SlurmOutputError, ask_version, parse_submissions

ATTEMPTS = 4
SETTLE_S = 2.0  # an sbatch cut off mid-request has had its answer from slurmctld by then


def submission_mark(job_id: str) -> str:
    return f"podrun:{job_id}"


def submit_once(tunnel: Tunnel, argv: list[str], job_name: str, job_id: str,
                env: dict[str, str] | None = None) -> CommandResult:
    """Run the ``sbatch`` command ``argv`` (which carries ``--comment=podrun:<job_id>``) until Slurm has the job once.

    ``env`` is added to sbatch's environment (which it passes to the job).

    Returns sbatch's result, or a stand-in whose stdout is the id of the job found queued.

    Raises:
        BackendError: the connection kept dropping, or the login host stayed unreachable.
    """
    run_once = getattr(tunnel, "run_once", tunnel.run)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return run_once(argv, env=env)
        except ConnectionLost as exc:
            print(f"podrun: {exc}; asking Slurm whether job {job_id} was queued", file=sys.stderr, flush=True)
            time.sleep(SETTLE_S * attempt)
            found = find_submission(tunnel, job_name, job_id)
            if found:
                print(f"podrun: it was: Slurm job {found}; not submitting it again", file=sys.stderr, flush=True)
                return CommandResult(0, f"{found}\n", "")
    raise BackendError(f"sbatch: the connection dropped {ATTEMPTS} times and Slurm has no job {job_id}; "
                       "submit again when the login host is reachable")


def find_submission(tunnel: Tunnel, job_name: str, job_id: str) -> str | None:
    """The Slurm job id of the submission of ``job_id``, if Slurm has one (in any state)."""
    result = tunnel.run(["squeue", "-h", "--states=all", f"--name={job_name}", "-o", "%A|%k"])
    try:
        return parse_submissions(result.stdout).get(submission_mark(job_id))
    except SlurmOutputError as exc:  # never guess: a wrong "not found" would queue the job twice
        raise exc.on(ask_version(tunnel.run)) from None
