"""Derive what each Slurm release prints from SchedMD/slurm's source: ``python tests/data/slurm/derive.py SLURM_GIT``.

``SLURM_GIT`` is a clone (or bare mirror) of https://github.com/SchedMD/slurm with its tags. For
each release family the last tag in :data:`TAGS` is read, and the ``derived`` sections of
``tests/data/slurm/<release>/*.txt`` are written (the ``recorded`` ones are kept):

- job states: ``job_state_string()`` in ``src/common/slurm_protocol_defs.c`` (squeue ``%T``,
  scontrol ``JobState=``, sacct ``State``, which prints ``CANCELLED by UID`` itself);
- pending reasons: ``job_reason_string()`` in ``src/common/slurm_protocol_defs.c`` up to 23.11,
  the table of ``job_state_reason_string()`` in ``src/common/job_state_reason.c`` from 24.05;
  squeue ``%r`` prints the job's ``state_desc`` instead when the controller set one
  (``ReqNodeNotAvail, UnavailableNodes:...``, ``launch failed requeued held``);
- node states: ``node_state_string()`` in ``src/common/slurm_protocol_defs.c``, lower-cased by
  sinfo's ``_print_state_long()`` (``src/sinfo/print.c``);
- scontrol's line: ``slurm_sprint_job_info()`` in ``src/api/job_info.c`` (``src/scontrol/info_job.c``
  from 24.11), which prints ``Scheduler=`` from 21.08 and ``FailedNode=`` from 23.02, and
  replaces the spaces of ``state_desc`` with ``_``; a derived line stops after ``BatchHost=``
  (the fields podrun reads come before it; the recorded 22.05 lines are whole);
- sacct's ``ExitCode``: ``src/sacct/print.c``, which subtracts 128 from an exit status of 128 or
  more up to 25.05, and not in 25.11;
- sbatch ``--parsable``: ``src/sbatch/sbatch.c``, ``ID`` or ``ID;cluster``;
- ``scontrol --version``: ``print_slurm_version()`` in ``src/common/proc_args.c``.

Every word a derived sample uses is checked against that tag's tables: a word the release does
not print stops the script. The cases mirror the recorded 22.05 ones (what the controller
printed for each), so a derived sample is the recorded one in that release's words and layout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from samples import HERE, Sample, read_samples, write_samples

TAGS = {"20.11": "slurm-20-11-9-1", "21.08": "slurm-21-08-8-2", "22.05": "slurm-22-05-11-1",
        "23.02": "slurm-23-02-8-1", "23.11": "slurm-23-11-11-1", "24.05": "slurm-24-05-8-1",
        "24.11": "slurm-24-11-7-1", "25.05": "slurm-25-05-8-1", "25.11": "slurm-25-11-7-1"}
RECORDED = "22.05"


class Source:
    """One tag's tables, read from the git repository."""

    def __init__(self, git: Path, tag: str) -> None:
        self.git, self.tag = git, tag
        protocol = self.show("src/common/slurm_protocol_defs.c")
        self.job_states = set(re.findall(r'return "([A-Z_?]+)"', _function(protocol, "job_state_string(uint32_t")))
        if self.exists("src/common/job_state_reason.c"):
            self.reasons = set(re.findall(r'\.str = "([^"]+)"', self.show("src/common/job_state_reason.c")))
        else:
            self.reasons = set(re.findall(r'return "([^"]+)"', _function(protocol, "job_reason_string(")))
        self.node_states = set(re.findall(r'return "([^"]+)"', _function(protocol, "node_state_string(uint32_t")))
        self.sacct_minus_128 = "tmp_int -= 128" in self.show("src/sacct/print.c")
        info = "src/scontrol/info_job.c" if "JobState=%s" in self.show("src/scontrol/info_job.c", "") else \
            "src/api/job_info.c"
        job_info = self.show(info)
        self.scheduler_field = "Scheduler=%s" in job_info
        self.failed_node_field = "FailedNode=%s" in job_info
        self.files = {"protocol": "src/common/slurm_protocol_defs.c", "info": info}

    def show(self, path: str, default: str | None = None) -> str:
        proc = subprocess.run(["git", "--git-dir", str(self.git), "show", f"{self.tag}:{path}"],
                              capture_output=True, text=True)
        if proc.returncode != 0 and default is None:
            raise SystemExit(f"{self.tag}:{path}: {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else default

    def exists(self, path: str) -> bool:
        return bool(self.show(path, ""))

    def grep(self, text: str) -> bool:
        return subprocess.run(["git", "--git-dir", str(self.git), "grep", "-q", "-F", text, self.tag, "--", "src"],
                              capture_output=True).returncode == 0


def _function(source: str, signature: str) -> str:
    """The body of the C function whose definition line holds ``signature``."""
    start = source.index("\n", source.index(f"*{signature}" if f"*{signature}" in source else signature))
    return source[start:source.index("\n}\n", start)]


# ---------------------------------------------------------------------------- the cases

# The common pending reasons, as squeue prints them (the last two are the controller's own text)
PENDING = [("resources", "Resources"), ("priority", "Priority"), ("dependency", "Dependency"),
           ("dependency-never-satisfied", "DependencyNeverSatisfied"), ("begin-time", "BeginTime"),
           ("held-user", "JobHeldUser"), ("held-admin", "JobHeldAdmin"), ("partition-time-limit", "PartitionTimeLimit"),
           ("qos-max-jobs-per-user", "QOSMaxJobsPerUserLimit"), ("assoc-grp-gres", "AssocGrpGRES"),
           ("reservation", "Reservation"), ("required-node-not-available", "ReqNodeNotAvail, UnavailableNodes:node2"),
           ("launch-failed-requeued-held", "launch failed requeued held")]
# (case, squeue's "%T|%r" lines, podrun's state, expectations beyond the state)
QUEUE_CASES = [
    ("running", ["RUNNING|None"], "RUNNING", {"raw": "RUNNING", "reason": "None"}),
    *((f"pending-{case}", [f"PENDING|{reason}"], "PENDING", {"reason": reason}) for case, reason in PENDING),
    ("requeued", ["PENDING|BeginTime"], "PENDING", {"reason": "BeginTime"}),
    ("requeue-in-progress", ["REQUEUED|None"], "PENDING", {"raw": "REQUEUED"}),
    ("requeue-held", ["REQUEUE_HOLD|JobHeldAdmin"], "PENDING", {"raw": "REQUEUE_HOLD"}),
    ("completing", ["COMPLETING|None"], "RUNNING", {"raw": "COMPLETING"}),
    ("configuring", ["CONFIGURING|None"], "PENDING", {"raw": "CONFIGURING"}),
    ("suspended", ["SUSPENDED|None"], "PENDING", {"raw": "SUSPENDED"}),
    ("array-running", ["RUNNING|None", "RUNNING|None", "PENDING|JobArrayTaskLimit"], "RUNNING", {"tasks": 3}),
    ("array-pending", ["PENDING|Priority"], "PENDING", {"tasks": 1}),
]
QUEUE_ONLY_IN = {"requeued-cron": ("20.11", ["REQUEUED_CRON|BeginTime"], "PENDING", {"raw": "REQUEUED_CRON"}),
                 "expediting": ("25.11", ["EXPEDITING|None"], "PENDING", {"raw": "EXPEDITING"})}

# (case, JobState, Reason as scontrol prints it, ExitCode, podrun's state, exit, signal); the line of a
# recorded case of the same shape gives the other fields
SHOW_CASES = [
    ("running", "RUNNING", "None", "0:0", "RUNNING", 0, 0, "running"),
    ("pending-priority", "PENDING", "Priority", "0:0", "PENDING", 0, 0, "pending-priority"),
    ("pending-resources", "PENDING", "Resources", "0:0", "PENDING", 0, 0, "pending-resources"),
    ("pending-held-user", "PENDING", "JobHeldUser", "0:0", "PENDING", 0, 0, "pending-held-user"),
    ("pending-required-node-not-available", "PENDING", "ReqNodeNotAvail,_UnavailableNodes:node2", "0:0",
     "PENDING", 0, 0, "pending-required-node-not-available"),
    ("pending-launch-failed-requeued-held", "PENDING", "launch_failed_requeued_held", "0:0", "PENDING", 0, 0,
     "pending-held-admin"),
    ("requeued", "PENDING", "BeginTime", "0:0", "PENDING", 0, 0, "requeued"),
    ("completed", "COMPLETED", "None", "0:0", "SUCCEEDED", 0, 0, "completed"),
    ("failed-exit-3", "FAILED", "NonZeroExitCode", "3:0", "FAILED", 3, 0, "failed-exit-3"),
    ("cancelled-while-running", "CANCELLED", "None", "0:15", "CANCELLED", 0, 15, "cancelled-while-running"),
    ("preempted", "PREEMPTED", "None", "0:15", "PREEMPTED", 0, 15, "preempted"),
    ("node-fail", "NODE_FAIL", "NodeDown", "0:0", "FAILED", 0, 0, "node-fail"),
    ("timeout", "TIMEOUT", "TimeLimit", "0:15", "FAILED", 0, 15, "timeout"),
    ("out-of-memory", "OUT_OF_MEMORY", "OutOfMemory", "0:125", "FAILED", 0, 125, "failed-exit-3"),
]

# (case, sacct lines, podrun's state, expectations); exit statuses as the job ended, before sacct prints them
ACCT_CASES = [
    ("running", ["RUNNING|0:0"], "RUNNING", {"exit": 0}),
    ("pending", ["PENDING|0:0"], "PENDING", {"exit": 0}),
    ("requeued", ["PENDING|0:0"], "PENDING", {"exit": 0}),
    ("completed", ["COMPLETED|0:0"], "SUCCEEDED", {"exit": 0}),
    ("failed-exit-3", ["FAILED|3:0"], "FAILED", {"exit": 3}),
    ("failed-exit-130", ["FAILED|130:0"], "FAILED", {}),  # exit: 2 before 25.11, 130 from it
    ("failed-signal-9", ["FAILED|0:9"], "FAILED", {"exit": 0, "signal": 9}),
    ("cancelled", ["CANCELLED by 0|0:15"], "CANCELLED", {"raw": "CANCELLED", "signal": 15}),
    ("preempted", ["PREEMPTED|0:15"], "PREEMPTED", {"signal": 15}),
    ("node-fail", ["NODE_FAIL|0:0"], "FAILED", {"raw": "NODE_FAIL"}),
    ("timeout", ["TIMEOUT|0:15"], "FAILED", {"raw": "TIMEOUT"}),
    ("out-of-memory", ["OUT_OF_MEMORY|0:125"], "FAILED", {"raw": "OUT_OF_MEMORY"}),
    ("array-completed", ["COMPLETED|0:0"] * 4, "SUCCEEDED", {"tasks": 4}),
    ("array-one-task-failed", ["COMPLETED|0:0", "FAILED|1:0", "COMPLETED|0:0"], "FAILED", {"tasks": 3, "exit": 1}),
]

# (case, {node: state as sinfo prints it}, the first release that prints all of them)
NODE_CASES = [
    ("common", {"node1": "idle", "node2": "mixed", "node3": "allocated", "node4": "down*", "node5": "drained",
                "node6": "draining", "node7": "completing", "node8": "idle~", "node9": "maint", "node10": "reserved",
                "node11": "fail", "node12": "unknown*", "node13": "allocated+", "node14": "idle#", "node15": "idle%",
                "node16": "drained*", "node17": "future", "node18": "reboot"}, "20.11"),
    ("planned-and-reboot", {"node1": "planned", "node2": "mixed-", "node3": "idle!", "node4": "reboot^",
                            "node5": "inval", "node6": "idle@", "node7": "powering_up"}, "21.08"),
    ("blocked", {"node1": "blocked", "node2": "idle"}, "24.05"),
    ("external", {"node1": "external", "node2": "idle"}, "25.05"),
    ("dynamic", {"node1": "dynamic_norm", "node2": "dynamic_future", "node3": "idle"}, "25.11"),
]
USABLE = {"idle", "mixed", "allocated", "completing", "planned", "reserved"}  # orchestrator.preflight.policy


def release_key(release: str) -> tuple[int, int]:
    major, minor = release.split(".")
    return int(major), int(minor)


def check(source: Source, words: set[str], table: set[str], what: str) -> None:
    missing = sorted(words - table)
    if missing:
        raise SystemExit(f"{source.tag}: {what} {missing} not in its table")


def queue_samples(release: str, source: Source) -> list[Sample]:
    cases = list(QUEUE_CASES) + [(case, lines, state, expect) for case, (only, lines, state, expect)
                                 in QUEUE_ONLY_IN.items() if only == release]
    samples = []
    for case, lines, state, expect in cases:
        words = {line.split("|")[0] for line in lines}
        reasons = {line.split("|")[1].split(",")[0] for line in lines} - {"launch failed requeued held"}
        check(source, words, source.job_states, "job state")
        check(source, reasons, source.reasons, "pending reason")
        if "launch failed requeued held" in "".join(lines) and not source.grep("launch failed requeued held"):
            raise SystemExit(f"{source.tag}: no 'launch failed requeued held'")
        samples.append(Sample(release, "squeue-job", case, "derived", {"state": state, **expect},
                              "".join(f"{line}\n" for line in lines)))
    return samples


def show_samples(release: str, source: Source, recorded: dict[str, str]) -> list[Sample]:
    samples = []
    for case, word, reason, code, state, status, signal, like in SHOW_CASES:
        check(source, {word}, source.job_states, "job state")
        if not reason.startswith(("ReqNodeNotAvail,_", "launch_failed")):
            check(source, {reason}, source.reasons, "reason")
        line = recorded[like].strip()
        line = re.sub(r"JobState=\S+ Reason=\S+", f"JobState={word} Reason={reason}", line)
        line = re.sub(r"ExitCode=\S+", f"ExitCode={code}", line)
        if case == "node-fail" and source.failed_node_field:
            line = line.replace(" Dependency=", " FailedNode=node2 Dependency=", 1)
        if not source.scheduler_field:
            line = re.sub(r" Scheduler=\S+", "", line)
        line = line[:line.index(" NumNodes=")]  # lines 1-14 of slurm_sprint_job_info: up to BatchHost
        expect = {"state": state, "raw": word, "exit": status, "signal": signal}
        samples.append(Sample(release, "scontrol-job", case, "derived", expect, line + "\n"))
    return samples


def acct_samples(release: str, source: Source) -> list[Sample]:
    samples = []
    for case, lines, state, expect in ACCT_CASES:
        check(source, {line.split("|")[0].split()[0] for line in lines}, source.job_states, "job state")
        printed = []
        for line in lines:
            word, code = line.split("|")
            status, signal = (int(part) for part in code.split(":"))
            status -= 128 if source.sacct_minus_128 and status >= 128 else 0
            printed.append(f"{word}|{status}:{signal}\n")
        expect = dict(expect)
        if case == "failed-exit-130":
            expect["exit"] = 2 if source.sacct_minus_128 else 130
        samples.append(Sample(release, "sacct", case, "derived", {"state": state, **expect}, "".join(printed)))
    return samples


def node_samples(release: str, source: Source) -> list[Sample]:
    samples = []
    for case, nodes, since in NODE_CASES:
        if release_key(release) < release_key(since):
            continue
        check(source, {state.upper() for state in nodes.values()}, source.node_states, "node state")
        usable = [node for node, state in nodes.items() if state in USABLE]
        samples.append(Sample(release, "sinfo", case, "derived", {"nodes": nodes, "usable": usable},
                              "".join(f"{node} {state}\n" for node, state in nodes.items())))
    return samples


def other_samples(release: str, source: Source) -> list[Sample]:
    version = source.tag.removeprefix("slurm-").rsplit("-", 1)[0].replace("-", ".")  # slurm-23-11-11-1: 23.11.11
    return [
        Sample(release, "sbatch", "submitted", "derived", {"id": "4242"}, "4242\n"),
        Sample(release, "sbatch", "submitted-to-another-cluster", "derived", {"id": "4242"}, "4242;cluster2\n"),
        Sample(release, "squeue-name", "two-submissions", "derived",
               {"marks": {"podrun:job-a": "4242", "podrun:job-b": "4243"}},
               "4242|podrun:job-a\n4243|podrun:job-b\n4244|(null)\n"),
        Sample(release, "version", "upstream", "derived", {"version": version}, f"slurm {version}\n"),
    ]


def header(source: Source, command: str, recorded: bool) -> list[str]:
    lines = [f"derived: SchedMD/slurm {source.tag}, {source.files['protocol']} and the printing code named in "
             "tests/data/slurm/derive.py (python tests/data/slurm/derive.py SLURM_GIT)"]
    if recorded:
        lines.insert(0, "recorded: Debian 12's slurm-wlm 22.05.8, tests/data/slurm/record.py")
    if command == "scontrol-job":
        lines.append(f"derived lines follow {source.files['info']} up to BatchHost= (the fields podrun reads)")
    return lines


def main() -> int:
    git = Path(sys.argv[1])
    recorded = {s.case: s.output for s in read_samples(HERE / RECORDED / "scontrol-job.txt") if s.source == "recorded"}
    for release, tag in TAGS.items():
        source = Source(git, tag)
        derived = (queue_samples(release, source) + show_samples(release, source, recorded)
                   + acct_samples(release, source) + node_samples(release, source) + other_samples(release, source))
        for command in ("squeue-job", "scontrol-job", "sacct", "sbatch", "squeue-name", "sinfo", "version"):
            path = HERE / release / f"{command}.txt"
            kept = [s for s in read_samples(path) if s.source == "recorded"] if path.exists() else []
            recorded_cases = {s.case for s in kept}
            mine = [s for s in derived if s.command == command and s.case not in recorded_cases]
            write_samples(path, header(source, command, bool(kept)), kept + mine)
        print(f"{release}: {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
