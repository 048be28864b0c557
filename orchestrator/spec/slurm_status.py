"""What Slurm prints, read: the six outputs podrun asks for, as Slurm 20.11 to 25.11 print them.

Pure functions, text in and a typed result out, with one table of Slurm's job states
(:data:`SLURM_STATES`) and one of its node states (:data:`NODE_STATES`):

===========================================  ==========================================
command                                      read by
===========================================  ==========================================
``squeue -h -j ID -o "%T|%r"``               :func:`parse_squeue_jobs`
``scontrol show job -o ID``                  :func:`parse_scontrol_jobs`
``sacct -n -X -P -j ID -o State,ExitCode``   :func:`parse_sacct_jobs`
``sbatch --parsable``                        :func:`parse_sbatch_id`
``squeue -h --states=all --name=N -o %A|%k`` :func:`parse_submissions`
``sinfo -h -N -o "%N %T"``                   :func:`parse_sinfo_nodes`
``scontrol --version``                       :func:`parse_version`
===========================================  ==========================================

Text, never ``--json``: the JSON output changed shape between releases (24.05's list-typed
states). Samples of every release's text are in ``tests/data/slurm/`` (recorded on 22.05,
derived from SchedMD/slurm's state tables and printing code for the others). An output these
functions cannot read raises :class:`SlurmOutputError` naming the command and the field; the
caller adds the Slurm version (:meth:`SlurmOutputError.on`), so the user sees one line and
never a traceback or a wrong state. A job array (or a heterogeneous job) prints a line per
task: :func:`summarize` makes one status of them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from orchestrator.errors import BackendError
from orchestrator.spec.jobstore import CANCELLED, FAILED, PENDING, PREEMPTED, RUNNING, SUCCEEDED

RELEASES = ("20.11", "21.08", "22.05", "23.02", "23.11", "24.05", "24.11", "25.05", "25.11")

# Every word job_state_string() prints (src/common/slurm_protocol_defs.c, 20.11 to 25.11): the
# base states, then the flags it prints instead of them. squeue %T, scontrol's JobState= and
# sacct's State all print these.
SLURM_STATES = {
    "PENDING": PENDING, "RUNNING": RUNNING, "SUSPENDED": PENDING, "COMPLETED": SUCCEEDED, "CANCELLED": CANCELLED,
    "FAILED": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED, "PREEMPTED": PREEMPTED, "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED, "OUT_OF_MEMORY": FAILED,
    "COMPLETING": RUNNING, "STAGE_OUT": RUNNING, "CONFIGURING": PENDING, "RESIZING": RUNNING,
    "REQUEUED": PENDING, "REQUEUED_CRON": PENDING,  # REQUEUED_CRON: 20.11 only
    "REQUEUE_FED": PENDING, "REQUEUE_HOLD": PENDING, "SPECIAL_EXIT": FAILED, "STOPPED": PENDING,
    "REVOKED": FAILED, "RESV_DEL_HOLD": PENDING, "SIGNALING": RUNNING,
    "EXPEDITING": PENDING,  # 25.11: checking whether to requeue it ahead of others
}
RANKS_ENDED_FILE = "ranks-ended-at"  # in the job's folder: the batch script's clock when srun's step ended
# A job's state in an array's summary: the first found in this order wins.
SUMMARY_ORDER = (RUNNING, PENDING, FAILED, PREEMPTED, CANCELLED, SUCCEEDED)

# Pending reasons that need the user (job_reason_string(), or the controller's own text).
REASON_HINTS = {
    "JobHeldUser": "held: scontrol release ID",
    "JobHeldAdmin": "held by an administrator",
    "launch failed requeued held": "its launch failed and Slurm held it: read the log, then scontrol release ID",
    "DependencyNeverSatisfied": "its dependency can never be satisfied: cancel it",
    "BadConstraints": "its constraints cannot be met: cancel it and fix the profile",
    "PartitionTimeLimit": "its time limit is above the partition's: fix slurm.time",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "InvalidAccount": "its account is not valid: fix slurm.account",
    "InvalidQOS": "its QoS is not valid: fix slurm.qos",
}

# node_state_string() (src/common/slurm_protocol_defs.c), lower-cased by sinfo's %T: the base
# states of 20.11 to 25.11, and the one-character flags it appends.
NODE_STATES = frozenset({
    "allocated", "blocked", "cancel_reboot", "cloud", "completing", "down", "drained", "draining",
    "dynamic_future", "dynamic_norm", "external", "fail", "failing", "future", "idle", "inval", "maint",
    "mixed", "perfctrs", "planned", "power_down", "power_up", "powered_down", "powering_down", "powering_up",
    "reboot", "reboot_issued", "reserved", "resume", "undrain", "unknown", "n/a", "?",
})
NODE_FLAGS = "*~#%!@^-$+"  # not responding, powered down, powering up, powering down, ... (see README)


class SlurmOutputError(BackendError):
    """Slurm printed something podrun cannot read; the message names the command, the field and the release."""

    def __init__(self, command: str, field: str, value: str, version: str = "") -> None:
        self.command, self.field, self.value, self.version = command, field, value, version
        release = f"Slurm {version}" if version else "this Slurm (version unknown)"
        super().__init__(f"cannot read {field} in the output of {command} from {release}: {value[:120]!r}; "
                         f"podrun reads Slurm {RELEASES[0]} to {RELEASES[-1]}: report this with that line")

    def on(self, version: str) -> SlurmOutputError:
        """The same error, naming the Slurm version (``scontrol --version``)."""
        return SlurmOutputError(self.command, self.field, self.value, version)


@dataclass(frozen=True)
class JobStatus:
    """One Slurm job (or array task, or heterogeneous component) as one command printed it."""

    raw: str  # Slurm's word: RUNNING, CANCELLED ...
    state: str  # podrun's (orchestrator.spec.jobstore)
    reason: str = ""  # why it waits (or "None"); scontrol prints its spaces as underscores
    exit_code: int | None = None  # the exit status of ExitCode=status:signal (None: not printed)
    signal: int = 0
    restarts: int = 0
    nodes: str = ""
    start_time: float | None = None
    task: str = ""  # ArrayTaskId or HetJobOffset
    tasks: int = 1  # how many lines summarize() made this of

    @property
    def hint(self) -> str:
        """What the user should do about the pending reason, or ""."""
        reason = self.reason.replace("_", " ")
        return REASON_HINTS.get(reason, REASON_HINTS.get(reason.split(",")[0], ""))

    def describe(self) -> str:
        """``PENDING (JobHeldUser: held: scontrol release ID)``, ``RUNNING``, ``2 RUNNING, 1 PENDING``."""
        if self.state in (CANCELLED, SUCCEEDED) or self.reason in ("", "None"):
            return self.raw  # what it last waited for no longer matters
        return f"{self.raw} ({': '.join(part for part in (self.reason, self.hint) if part)})"


def job_state(word: str, command: str) -> str:
    """podrun's state for Slurm's state ``word``.

    Raises:
        SlurmOutputError: a word no release from 20.11 to 25.11 prints.
    """
    if word not in SLURM_STATES:
        raise SlurmOutputError(command, "the job state", word)
    return SLURM_STATES[word]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_squeue_jobs(text: str) -> list[JobStatus]:
    """``squeue -h -j ID -o "%T|%r"``: a line per job, or per array task (pending tasks share one).

    Raises:
        SlurmOutputError: a line without ``|`` or with a state no release prints.
    """
    command, jobs = 'squeue -o "%T|%r"', []
    for line in _lines(text):
        word, sep, reason = line.partition("|")
        if not sep:
            raise SlurmOutputError(command, '"%T|%r"', line)
        jobs.append(JobStatus(word, job_state(word, command), reason=reason))
    return jobs


# A key of ``scontrol show job -o``: JobId, AllocNode:Sid, Socks/Node, NtasksPerN:B:S:C, Nodes(DOWN) ...
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/()]*)=")


def parse_scontrol(line: str) -> dict[str, str]:
    """One job's line of ``scontrol show job -o`` as its ``Key=value`` fields.

    A value may hold spaces (a job name, a command, a path); it runs to the next `` Key=``.
    The first of a key wins: the fields podrun reads come before any user-set text but the
    job name, and podrun's job names have no spaces (``jobs.contract.config_io.NAME_PATTERN``).
    """
    fields: dict[str, str] = {}
    matches = list(_SCONTROL_KEY.finditer(line))
    for match, following in zip(matches, [*matches[1:], None]):
        end = following.start() if following else len(line)
        fields.setdefault(match.group(1), line[match.end():end].strip())
    return fields


def _exit_status(value: str, command: str) -> tuple[int, int]:
    """``status:signal`` (ExitCode) as two ints."""
    status, sep, signal = value.partition(":")
    if not (sep and status.isdigit() and signal.isdigit()):
        raise SlurmOutputError(command, "ExitCode", value)
    return int(status), int(signal)


def parse_scontrol_jobs(text: str) -> list[JobStatus]:
    """``scontrol show job -o ID``: a line per job, array task or heterogeneous component.

    Raises:
        SlurmOutputError: a line without JobState, or an unreadable ExitCode or Restarts.
    """
    command, jobs = "scontrol show job -o", []
    for line in _lines(text):
        fields = parse_scontrol(line)
        if "JobState" not in fields:
            raise SlurmOutputError(command, "JobState", line)
        status, signal = _exit_status(fields.get("ExitCode", "0:0"), command)
        restarts = fields.get("Restarts", "0")
        if not restarts.isdigit():
            raise SlurmOutputError(command, "Restarts", restarts)
        word = fields["JobState"]
        jobs.append(JobStatus(word, job_state(word, command), reason=fields.get("Reason", ""),
                              exit_code=status, signal=signal, restarts=int(restarts),
                              nodes=fields.get("NodeList", ""), start_time=slurm_time(fields.get("StartTime")),
                              task=fields.get("ArrayTaskId", fields.get("HetJobOffset", ""))))
    return jobs


def parse_sacct_jobs(text: str) -> list[JobStatus]:
    """``sacct -n -X -P -j ID -o State,ExitCode``: a line per job or array task.

    ``CANCELLED by UID`` is CANCELLED. Releases before 25.11 print an exit status of 128 or
    more less 128 (src/sacct/print.c): podrun's own codes are all below 128.

    Raises:
        SlurmOutputError: a line that is not ``STATE|status:signal``, or a state no release prints.
    """
    command, jobs = "sacct -o State,ExitCode", []
    for line in _lines(text):
        state, sep, code = line.partition("|")
        if not sep or not state.split():
            raise SlurmOutputError(command, "State|ExitCode", line)
        word = state.split()[0]
        status, signal = _exit_status(code, command)
        jobs.append(JobStatus(word, job_state(word, command), exit_code=status, signal=signal))
    return jobs


def parse_sbatch_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``1234``, or ``1234;cluster`` on a multi-cluster setup).

    Raises:
        SlurmOutputError: its last line holds no job id.
    """
    lines = _lines(stdout)
    job_id = lines[-1].split(";")[0] if lines else ""
    if not job_id.isdigit():
        raise SlurmOutputError("sbatch --parsable", "the job id", stdout.strip())
    return job_id


def parse_submissions(text: str) -> dict[str, str]:
    """``squeue -h --states=all --name=N -o "%A|%k"``: {comment: job id}, the newest job of a comment last.

    Raises:
        SlurmOutputError: a line that is not ``ID|comment``.
    """
    found: dict[str, str] = {}
    for line in _lines(text):
        job_id, sep, comment = line.partition("|")
        if not sep or not job_id.isdigit():
            raise SlurmOutputError('squeue -o "%A|%k"', '"%A|%k"', line)
        found[comment] = job_id
    return found


def parse_sinfo_nodes(text: str) -> dict[str, str]:
    """``sinfo -h -N -o "%N %T"`` as {node: state}, flags kept (``down*``); a node in several partitions once.

    Raises:
        SlurmOutputError: a line that is not ``NODE STATE``, or a state no release prints.
    """
    found: dict[str, str] = {}
    for line in _lines(text):
        parts = line.split()
        state = parts[-1].lower() if len(parts) == 2 else ""
        if state.rstrip(NODE_FLAGS) not in NODE_STATES or len(state) - len(state.rstrip(NODE_FLAGS)) > 1:
            raise SlurmOutputError('sinfo -o "%N %T"', "the node state", line)
        found.setdefault(parts[0], state)
    return found


def parse_version(text: str) -> str:
    """``scontrol --version`` (``slurm 23.11.4``, Debian's ``slurm-wlm 22.05.8``) as ``23.11.4``; "" if none."""
    match = re.search(r"\b(\d{2}\.\d{2}(?:\.\d+)?)", text)
    return match.group(1) if match else ""


def slurm_time(value: str | None) -> float | None:
    """A Slurm timestamp (``2024-05-01T12:00:03``, local time) as epoch seconds; None for Unknown/None."""
    try:
        return time.mktime(time.strptime(value or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def allocation_end(end_time: float, ranks_ended: str | None) -> float:
    """When an allocation ended: Slurm's ``EndTime``, in whole seconds rounded down, made finer by
    the batch script's clock at its ranks' exit (``ranks_ended``, the text of ``RANKS_ENDED_FILE``)
    when that falls within the same second; ``EndTime`` otherwise.
    """
    try:
        stamp = float((ranks_ended or "").strip())
    except ValueError:
        return end_time
    return stamp if end_time <= stamp < end_time + 1 else end_time


def summarize(jobs: list[JobStatus]) -> JobStatus | None:
    """One status for a job's lines: itself, or an array's tasks (running if any runs, else pending if
    any waits, else the worst end: failed, preempted, cancelled, succeeded); None for no lines.
    """
    if len(jobs) <= 1:
        return jobs[0] if jobs else None
    lead = min(jobs, key=lambda job: SUMMARY_ORDER.index(job.state))
    counts = {job.raw: sum(other.raw == job.raw for other in jobs) for job in jobs}
    raw = ", ".join(f"{count} {word}" for word, count in counts.items())
    return replace(lead, raw=raw, restarts=max(job.restarts for job in jobs), tasks=len(jobs),
                   nodes=",".join(dict.fromkeys(job.nodes for job in jobs if job.nodes and job.nodes != "(null)")))


def ask_version(run: Callable[[list[str]], object]) -> str:
    """The Slurm version from ``scontrol --version`` through ``run`` (a tunnel's, or subprocess's); "" if none."""
    try:
        result = run(["scontrol", "--version"])
    except Exception:  # noqa: BLE001 - only a message is at stake: the error being reported comes first
        return ""
    return parse_version(getattr(result, "stdout", "") or "")
