"""Every Slurm release's output, read right: the samples in tests/data/slurm/ through the status path.

Each sample (recorded on Debian's 22.05, or derived from a release's source: see
tests/data/slurm/README.md) is read by its parser and checked against what the sample says
podrun must conclude. Then every job case goes through the status path itself
(:meth:`SlurmBackend._query`, squeue then scontrol then sacct) on a tunnel that answers with that
release's text, as each command would on a real cluster. What podrun cannot read is one line
naming the Slurm version and the field, never a traceback or a wrong state.
"""

from __future__ import annotations

import pytest

from orchestrator.backends.slurm import SlurmBackend
from orchestrator.backends.slurm_submit import find_submission
from orchestrator.backends.tunnel import CommandResult
from orchestrator.cli import main
from orchestrator.preflight import policy
from orchestrator.spec import slurm_status
from orchestrator.spec.jobstore import UNKNOWN, JobRecord
from orchestrator.spec.slurm_status import RELEASES, SlurmOutputError
from tests.data.slurm.samples import HERE, Sample, all_samples

pytestmark = pytest.mark.fast  # text in, states out: no cluster

SAMPLES = all_samples()
ACCOUNTING_OFF = CommandResult(1, "", "Slurm accounting storage is disabled\n")
INVALID_JOB = CommandResult(1, "", "slurm_load_jobs error: Invalid job id specified\n")


def by_command(command: str) -> list[Sample]:
    return [sample for sample in SAMPLES if sample.command == command]


def ids(samples: list[Sample]) -> list[str]:
    return [sample.id for sample in samples]


class SlurmText:
    """A tunnel whose Slurm answers with fixed text, and counts what it was asked."""

    def __init__(self, answers: dict[str, CommandResult], version: str = "slurm 24.05.8") -> None:
        self.answers = answers | {"scontrol --version": CommandResult(0, f"{version}\n", "")}
        self.asked: list[str] = []

    def run(self, argv: list[str], timeout: float = 60, env: dict | None = None) -> CommandResult:
        key = {"squeue": "squeue -h --states=all" if "--states=all" in argv else "squeue -h -j",
               "scontrol": "scontrol --version" if "--version" in argv else "scontrol show job",
               "sacct": "sacct -n -X"}.get(argv[0], argv[0])
        self.asked.append(key)
        return self.answers.get(key, INVALID_JOB)

    def read_text(self, path: str, offset: int = 0) -> str | None:
        return None


def answers(queue: str | None, show: str | None, acct: str | None) -> dict[str, CommandResult]:
    """squeue, scontrol and sacct answering with these texts; None: the command does not know the job."""
    return {"squeue -h -j": CommandResult(0, queue, "") if queue is not None else INVALID_JOB,
            "scontrol show job": CommandResult(0, show, "") if show is not None else INVALID_JOB,
            "sacct -n -X": CommandResult(0, acct, "") if acct is not None else ACCOUNTING_OFF}


# What each command prints of a job (squeue's "%T|%r" has no exit code or restarts; sacct's no reason).
PRINTS = {"squeue-job": ("raw", "reason"), "scontrol-job": ("raw", "reason", "exit", "signal", "restarts"),
          "sacct": ("raw", "exit", "signal")}
FIELDS = {"raw": "raw", "reason": "reason", "exit": "exit_code", "signal": "signal", "restarts": "restarts"}


def check_job(sample: Sample, job: slurm_status.JobStatus) -> None:
    expect = sample.expect
    assert job.state == expect["state"], sample.output
    assert job.tasks == expect.get("tasks", job.tasks)
    for key in PRINTS[sample.command]:
        if key in expect:
            assert getattr(job, FIELDS[key]) == expect[key], (key, sample.output)


# --------------------------------------------------------------------------- the samples themselves


def test_every_release_has_samples_of_every_command():
    for release in RELEASES:
        files = {path.stem for path in (HERE / release).glob("*.txt")}
        assert files == {"squeue-job", "scontrol-job", "sacct", "sbatch", "squeue-name", "sinfo", "version"}, release
    assert {sample.source for sample in SAMPLES} == {"recorded", "derived"}
    recorded = {sample.release for sample in SAMPLES if sample.source == "recorded"}
    assert recorded == {"22.05"}  # Debian's; the others are derived from SchedMD/slurm's source
    for release in RELEASES:
        cases = {s.case for s in SAMPLES if s.release == release and s.command in ("squeue-job", "scontrol-job")}
        for case in ("running", "pending-priority", "pending-resources", "pending-held-user", "requeued", "preempted",
                     "node-fail", "timeout", "cancelled-while-running", "completed", "array-running"):
            assert case in cases, (release, case)


@pytest.mark.parametrize("sample", by_command("squeue-job"), ids=ids(by_command("squeue-job")))
def test_squeue(sample):
    check_job(sample, slurm_status.summarize(slurm_status.parse_squeue_jobs(sample.output)))


@pytest.mark.parametrize("sample", by_command("scontrol-job"), ids=ids(by_command("scontrol-job")))
def test_scontrol(sample):
    job = slurm_status.summarize(slurm_status.parse_scontrol_jobs(sample.output))
    check_job(sample, job)
    assert job.tasks == len(sample.output.strip().splitlines())


@pytest.mark.parametrize("sample", by_command("sacct"), ids=ids(by_command("sacct")))
def test_sacct(sample):
    if sample.expect.get("returncode"):  # recorded: accounting off prints nothing on stdout
        assert sample.output.strip() == "" and "accounting storage is disabled" in sample.expect["stderr"]
        return
    check_job(sample, slurm_status.summarize(slurm_status.parse_sacct_jobs(sample.output)))


@pytest.mark.parametrize("sample", by_command("sbatch"), ids=ids(by_command("sbatch")))
def test_sbatch(sample):
    assert slurm_status.parse_sbatch_id(sample.output) == sample.expect["id"]


@pytest.mark.parametrize("sample", by_command("squeue-name"), ids=ids(by_command("squeue-name")))
def test_submissions_found_by_their_comment(sample):
    tunnel = SlurmText({"squeue -h --states=all": CommandResult(0, sample.output, "")})
    for mark, job_id in sample.expect["marks"].items():
        assert find_submission(tunnel, "podrun-a", mark.removeprefix("podrun:")) == job_id
    assert find_submission(tunnel, "podrun-a", "job-z") is None


@pytest.mark.parametrize("sample", by_command("sinfo"), ids=ids(by_command("sinfo")))
def test_sinfo(sample):
    nodes = policy.parse_sinfo_nodes(sample.output)
    assert nodes == sample.expect["nodes"]
    assert [node for node, state in nodes.items() if policy.usable(state)] == sample.expect["usable"]


@pytest.mark.parametrize("sample", by_command("version"), ids=ids(by_command("version")))
def test_version(sample):
    assert slurm_status.parse_version(sample.output) == sample.expect["version"]


# --------------------------------------------------------------------------- the status path, per release


def job_cases() -> list[tuple[str, str, Sample | None, Sample | None]]:
    """(release, case, its squeue sample, its scontrol sample) for every job case of every release."""
    found: dict[tuple[str, str], dict[str, Sample]] = {}
    for sample in by_command("squeue-job") + by_command("scontrol-job"):
        found.setdefault((sample.release, sample.case), {})[sample.command] = sample
    return [(release, case, pair.get("squeue-job"), pair.get("scontrol-job"))
            for (release, case), pair in found.items()]


@pytest.mark.parametrize("release,case,queue,show", job_cases(), ids=[f"{r}/{c}" for r, c, _, _ in job_cases()])
def test_the_status_path_on_every_job_sample(release, case, queue, show):
    """squeue and scontrol as the cluster answers; then each alone (the other forgot the job, or failed)."""
    expected = (show or queue).expect["state"]
    backend = SlurmBackend()
    both = SlurmText(answers(queue.output if queue else None, show.output if show else None, None))
    state, detail, exit_code = backend._query(both, "4242")
    assert state == expected and detail, detail
    if show is not None and state != "RUNNING":
        assert exit_code == show.expect.get("exit", exit_code)
    if queue is not None:
        state, detail, _ = SlurmBackend()._query(SlurmText(answers(queue.output, None, None)), "4242")
        assert state == queue.expect["state"], detail
    assert "scontrol --version" not in both.asked  # asked only to name a release in an error


@pytest.mark.parametrize("sample", [s for s in by_command("sacct") if s.expect.get("state")],
                         ids=ids([s for s in by_command("sacct") if s.expect.get("state")]))
def test_the_status_path_falls_back_to_sacct(sample):
    state, detail, exit_code = SlurmBackend()._query(SlurmText(answers(None, None, sample.output)), "4242")
    assert state == sample.expect["state"] and exit_code == sample.expect.get("exit", exit_code), detail


def test_with_accounting_off_a_forgotten_job_is_unknown_not_failed():
    state, detail, exit_code = SlurmBackend()._query(SlurmText(answers(None, None, None)), "4242")
    assert state == UNKNOWN and "accounting off" in detail and exit_code is None


def test_a_pending_reason_that_needs_the_user_says_what_to_type():
    show = next(s for s in by_command("scontrol-job") if s.release == "22.05" and s.case == "pending-held-user")
    _, detail, _ = SlurmBackend()._query(SlurmText(answers(None, show.output, None)), "4242")
    assert "JobHeldUser: held: scontrol release ID" in detail
    queue = next(s for s in by_command("squeue-job") if s.case == "pending-required-node-not-available")
    assert slurm_status.parse_squeue_jobs(queue.output)[0].describe() == \
        "PENDING (ReqNodeNotAvail, UnavailableNodes:node2)"


# --------------------------------------------------------------------------- what podrun cannot read

UNREADABLE = [
    ("squeue", answers("FROBNICATING|None\n", None, None), "the job state", "'FROBNICATING'"),
    ("squeue", answers("RUNNING None\n", None, None), '"%T|%r"', "RUNNING None"),
    ("scontrol", answers(None, "JobId=4242 JobName=x JobState=RUNNING Reason=None ExitCode=zero\n", None),
     "ExitCode", "'zero'"),
    ("scontrol", answers(None, "JobId=4242 JobName=x State=RUNNING\n", None), "JobState", "JobId=4242"),
    ("scontrol", answers(None, "JobId=4242 JobName=x JobState=HIBERNATING Reason=None ExitCode=0:0\n", None),
     "the job state", "HIBERNATING"),
    ("sacct", answers(None, None, "COMPLETED 0:0\n"), "State|ExitCode", "COMPLETED 0:0"),
    ("sacct", answers(None, None, "VANISHED|0:0\n"), "the job state", "VANISHED"),
]


@pytest.mark.parametrize("command,answer,field,value", UNREADABLE, ids=[f"{u[0]}-{u[2]}" for u in UNREADABLE])
def test_an_unreadable_status_is_one_line_naming_the_release_and_the_field(command, answer, field, value):
    tunnel = SlurmText(answer, version="slurm 26.05.1")
    backend = SlurmBackend()
    for _ in range(2):
        with pytest.raises(SlurmOutputError) as error:
            backend._query(tunnel, "4242")
        message = str(error.value)
        assert "\n" not in message and command in message and field in message and value in message, message
        assert "Slurm 26.05.1" in message and "20.11 to 25.11" in message
    assert tunnel.asked.count("scontrol --version") == 1  # asked once, kept


def test_podrun_status_prints_it_in_one_line_and_exits_69(capsys, podrun_home, monkeypatch):
    import orchestrator.backends.slurm as slurm

    tunnel = SlurmText(answers("FROBNICATING|None\n", None, None), version="slurm 26.05.1")
    monkeypatch.setattr(slurm, "open_tunnel", lambda login: tunnel)
    JobRecord(job_id="job-1", name="x", backend="slurm", recipe="resnet50", cluster="c",
              job_dir=str(podrun_home / "jobs" / "job-1"), checkpoint_dir=str(podrun_home / "c"),
              tracking_uri="sqlite:///x.db", world_size=1, native_id="4242", state="RUNNING").save()
    assert main(["status", "job-1"]) == 69
    err = capsys.readouterr().err.strip()
    assert err.startswith("podrun: error: cannot read the job state in the output of squeue") and "\n" not in err
    assert "from Slurm 26.05.1" in err and "Traceback" not in err


def test_sbatch_and_the_submission_search_refuse_to_guess():
    with pytest.raises(SlurmOutputError, match="the job id in the output of sbatch --parsable"):
        slurm_status.parse_sbatch_id("Submitted batch job 4242\n")
    tunnel = SlurmText({"squeue -h --states=all": CommandResult(0, "4242 podrun:job-a\n", "")},
                       version="slurm 25.11.7")
    with pytest.raises(SlurmOutputError, match=r"from Slurm 25\.11\.7"):
        find_submission(tunnel, "podrun-a", "job-a")  # a wrong "not found" would submit the job twice


@pytest.mark.parametrize("line", ["node1 hibernating", "node1", "node1 idle**", "node1 idle extra"])
def test_sinfo_lines_no_release_prints_are_refused_by_preflight(line, monkeypatch):
    monkeypatch.setattr(policy, "_run", lambda argv: CommandResult(0, "slurm 23.02.8\n", ""))
    with pytest.raises(SlurmOutputError) as error:
        policy.parse_sinfo_nodes(f"node0 idle\n{line}\n")
    assert "the node state" in str(error.value) and "Slurm 23.02.8" in str(error.value)
