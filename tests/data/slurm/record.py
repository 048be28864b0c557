"""Record what a real Slurm prints for the six commands podrun reads: ``python tests/data/slurm/record.py``.

Starts its own two-node cluster (one slurmctld and two slurmd on this host, as
``tests/fixtures/slurm.py`` does, with preemption, a short-limit partition and a 10 s
SlurmdTimeout), plays each case (a job running, pending for each common reason, requeued,
preempted, on a failed node, timed out, cancelled, completed, failed, an array), captures
``squeue``/``scontrol``/``sacct``/``sbatch``/``sinfo`` as they print, and writes
``tests/data/slurm/<release>/*.txt`` sections labelled ``recorded``. The expected podrun state
of each case is written here, from what the case does, not from podrun's parser. Needs root,
munge and Debian's ``slurmctld slurmd slurm-client``; takes about three minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from samples import HERE, Sample, read_samples, write_samples

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
NODES = ("node1", "node2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def conf(base: Path, host: str, ports: dict[str, int]) -> str:
    nodes = [f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 Port={ports[n]} "
             "State=UNKNOWN" for n in NODES]
    return "\n".join([
        "ClusterName=podrun-record", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ports['ctld']}",
        "AuthType=auth/munge", "CredType=cred/munge", "SlurmUser=root", "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "JobRequeue=1",
        f"AuthInfo=cred_expire=30,socket={base}/munge/munge.sock",
        "FirstJobId=4201", "KillWait=5", "MinJobAge=3600", "SlurmdTimeout=10", "ReturnToService=2",
        "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        f"StateSaveLocation={base}/state", f"SlurmdSpoolDir={base}/%n", f"SlurmctldPidFile={base}/slurmctld.pid",
        f"SlurmdPidFile={base}/slurmd-%n.pid", f"SlurmctldLogFile={base}/slurmctld.log",
        f"SlurmdLogFile={base}/slurmd-%n.log", *nodes,
        "PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL",
        "PartitionName=requeue Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE",
        "PartitionName=urgent Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF",
        "PartitionName=short Nodes=node1,node2 MaxTime=5 State=UP PriorityTier=1", ""])


def start_munge(folder: Path) -> subprocess.Popen:
    """A munged of our own on a socket in ``folder`` (another test's system munged may come and go)."""
    folder.mkdir(mode=0o755)
    shutil.chown(folder, "munge", "munge")
    sock = folder / "munge.sock"
    argv = [shutil.which("munged", path=SBIN), "--foreground", f"--socket={sock}", f"--pid-file={folder}/munged.pid",
            f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"]
    proc = subprocess.Popen(["runuser", "-u", "munge", "--", *argv], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        encoded = subprocess.run(["munge", "-n", f"--socket={sock}"], capture_output=True)
        if encoded.returncode == 0:
            return proc
        time.sleep(0.2)
    raise RuntimeError("munged did not start")


class Cluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="podrun-record-"))
        self.base.chmod(0o755)  # munged (the munge user) reaches its socket folder inside
        self.host = socket.gethostname().split(".")[0]
        self.ports = {"ctld": free_port(), **{n: free_port() for n in NODES}}
        self.procs: dict[str, subprocess.Popen] = {}
        self.munged: subprocess.Popen | None = None
        self.env = {**os.environ, "SLURM_CONF": str(self.base / "slurm.conf"), "PATH": SBIN}

    def start(self) -> None:
        self.munged = start_munge(self.base / "munge")
        for sub in ("state", *NODES):
            (self.base / sub).mkdir()
        (self.base / "slurm.conf").write_text(conf(self.base, self.host, self.ports))
        self.spawn("slurmctld", "slurmctld", "-D", "-c", "-f", str(self.base / "slurm.conf"))
        for node in NODES:
            self.spawn(node, "slurmd", "-D", "-N", node, "-f", str(self.base / "slurm.conf"))
        self.wait(lambda: self.nodes() == {"node1": "idle", "node2": "idle"}, 60, "nodes idle")

    def spawn(self, name: str, *argv: str) -> None:
        log = open(self.base / f"{name}.out", "wb")  # noqa: SIM115
        with log:
            self.procs[name] = subprocess.Popen([shutil.which(argv[0], path=SBIN), *argv[1:]], stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True, env=self.env)

    def stop(self) -> None:
        self.run("scancel", "--user=root")
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.munged is not None:  # munged itself (runuser's child), then runuser
            pidfile = self.base / "munge" / "munged.pid"
            if pidfile.exists():
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            else:
                self.munged.terminate()
            self.munged.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60)

    def nodes(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def sbatch(self, *flags: str, script: str = "sleep 600", name: str = "rec") -> str:
        result = self.run("sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null", *flags,
                          f"--wrap={script}")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def state(self, job: str) -> str:
        """JobState in scontrol (squeue shows no job that has ended)."""
        out = self.run("scontrol", "show", "job", "-o", job).stdout
        return out.split("JobState=", 1)[1].split()[0] if "JobState=" in out else ""

    def wait(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}\n{(self.base / 'slurmctld.log').read_text()[-3000:]}")

    def wait_state(self, job: str, *states: str, timeout: float = 60) -> None:
        self.wait(lambda: self.state(job) in states, timeout, f"job {job} in {states}")

    def wait_reason(self, job: str, reason: str, timeout: float = 30) -> None:
        self.wait(lambda: reason in self.run("squeue", "-h", "-j", job, "-o", "%r").stdout, timeout,
                  f"job {job} pending for {reason}")


class Recorder:
    """Collects sections per command file: (case, expected, output)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.files: dict[str, list[tuple[str, dict, str]]] = {}

    def add(self, command: str, case: str, expect: dict, output: str) -> None:
        self.files.setdefault(command, []).append((case, expect, output))

    def job(self, case: str, job: str, state: str, **expect: object) -> None:
        """squeue and scontrol of ``job`` now, both expected to say podrun's ``state``."""
        queue = self.cluster.run("squeue", "-h", "-j", job, "-o", "%T|%r")
        show = self.cluster.run("scontrol", "show", "job", "-o", job)
        assert show.returncode == 0, show.stderr
        if queue.stdout.strip():
            self.add("squeue-job", case, {"state": state, **expect}, queue.stdout)
        self.add("scontrol-job", case, {"state": state, **expect}, show.stdout)

    def write(self, release: str, version: str) -> None:
        """Replace the recorded sections of ``tests/data/slurm/<release>/``; the derived ones stay."""
        for command, sections in self.files.items():
            path = HERE / release / f"{command}.txt"
            derived = [s for s in read_samples(path) if s.source != "recorded"] if path.exists() else []
            recorded = [Sample(release, command, case, "recorded", expect, output) for case, expect, output in sections]
            header = [f"recorded: Debian 12's {version}, tests/data/slurm/record.py ({time.strftime('%Y-%m-%d')})",
                      *(line for line in _header_lines(path) if line.startswith("derived"))]
            write_samples(path, header, recorded + [s for s in derived if s.case not in self.cases(command)])

    def cases(self, command: str) -> set[str]:
        return {case for case, _, _ in self.files.get(command, [])}


def _header_lines(path: Path) -> list[str]:
    """The ``#`` lines of a sample file after its first (the command)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line[2:] for line in lines[1:] if line.startswith("# ")]


def record(rec: Recorder) -> None:  # one scene after another, in the order they run
    c = rec.cluster
    rec.add("sinfo", "all-idle", {"nodes": {"node1": "idle", "node2": "idle"}, "usable": ["node1", "node2"]},
            c.run("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    # ---- jobs that end by themselves
    done = c.sbatch("-c", "1", "--comment=podrun:job-a", script="true", name="podrun-a")
    rec.add("sbatch", "submitted", {"id": done}, done + "\n")
    failed = c.sbatch("-c", "1", script="exit 3")
    killed = c.sbatch("-c", "1", script="kill -9 $$")
    for job in (done, failed, killed):
        c.wait_state(job, "COMPLETED", "FAILED")
    rec.job("completed", done, "SUCCEEDED", raw="COMPLETED", exit=0)
    rec.job("failed-exit-3", failed, "FAILED", raw="FAILED", exit=3)
    rec.job("failed-signal-9", killed, "FAILED", raw="FAILED", exit=0, signal=9)
    array = c.sbatch("-c", "1", "--array=1-4%2", script="sleep 8")
    c.wait(lambda: c.run("squeue", "-h", "-j", array, "-o", "%T").stdout.count("RUNNING") == 2, 30, "2 tasks run")
    c.wait_reason(array, "JobArrayTaskLimit")
    rec.job("array-running", array, "RUNNING", tasks=3)
    again = c.sbatch("-c", "1", "--comment=podrun:job-b", script="true", name="podrun-a")
    c.wait_state(again, "COMPLETED")
    rec.add("squeue-name", "two-submissions", {"marks": {"podrun:job-a": done, "podrun:job-b": again}},
            c.run("squeue", "-h", "--states=all", "--name=podrun-a", "-o", "%A|%k").stdout)
    odd = c.sbatch("-c", "1", "--array=1-3", script='[ "$SLURM_ARRAY_TASK_ID" != 2 ]')
    c.wait(lambda: not c.run("squeue", "-h", "-j", array, "-t", "PD,R,CG", "-o", "%T").stdout.strip(), 60,
           "array done")
    c.wait(lambda: not c.run("squeue", "-h", "-j", odd, "-t", "PD,R,CG", "-o", "%T").stdout.strip(), 60,
           "array done")
    rec.job("array-completed", array, "SUCCEEDED", tasks=4)
    rec.job("array-one-task-failed", odd, "FAILED", tasks=3)
    # ---- running, and pending for each common reason
    r1 = c.sbatch("-c", "2", "-w", "node1")
    c.wait_state(r1, "RUNNING")
    half = c.sbatch("-c", "1", "-w", "node2")
    c.wait_state(half, "RUNNING")
    rec.add("sinfo", "allocated-and-mixed", {"nodes": {"node1": "allocated", "node2": "mixed"},
                                             "usable": ["node1", "node2"]},
            c.run("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    rec.job("running", r1, "RUNNING", raw="RUNNING", reason="None")
    p1 = c.sbatch("-c", "2")
    c.wait_reason(p1, "Resources")
    p2 = c.sbatch("-c", "2")
    c.wait_reason(p2, "Priority")
    rec.job("pending-resources", p1, "PENDING", reason="Resources")
    rec.job("pending-priority", p2, "PENDING", reason="Priority")
    dep = c.sbatch("-c", "1", f"--dependency=afterok:{r1}")
    c.wait_reason(dep, "Dependency")
    rec.job("pending-dependency", dep, "PENDING", reason="Dependency")
    never = c.sbatch("-c", "1", f"--dependency=afterok:{failed}")
    c.wait_reason(never, "DependencyNeverSatisfied")
    rec.job("pending-dependency-never-satisfied", never, "PENDING", reason="DependencyNeverSatisfied")
    begin = c.sbatch("-c", "1", "--begin=now+3600")
    c.wait_reason(begin, "BeginTime")
    rec.job("pending-begin-time", begin, "PENDING", reason="BeginTime")
    held = c.sbatch("-c", "1", "--hold")
    c.wait_reason(held, "JobHeld")
    rec.job("pending-held-at-submit", held, "PENDING", reason="JobHeldUser")
    user_hold = c.sbatch("-c", "1", "--begin=now+3600")
    c.run("scontrol", "uhold", user_hold)
    c.wait_reason(user_hold, "JobHeldUser")
    rec.job("pending-held-user", user_hold, "PENDING", reason="JobHeldUser")
    admin_hold = c.sbatch("-c", "1", "--begin=now+3600")
    c.run("scontrol", "hold", admin_hold)
    c.wait_reason(admin_hold, "JobHeldAdmin")
    rec.job("pending-held-admin", admin_hold, "PENDING", reason="JobHeldAdmin")
    limit = c.sbatch("-c", "1", "-p", "short", "--time=10")
    c.wait_reason(limit, "PartitionTimeLimit")
    rec.job("pending-partition-time-limit", limit, "PENDING", reason="PartitionTimeLimit")
    c.run("scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=recording")
    c.wait(lambda: c.nodes().get("node2") == "draining", 30, "node2 draining")
    rec.add("sinfo", "draining", {"nodes": {"node1": "allocated", "node2": "draining"}, "usable": ["node1"]},
            c.run("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    want2 = c.sbatch("-c", "1", "-w", "node2", "-p", "urgent")
    c.wait_reason(want2, "ReqNodeNotAvail")
    rec.job("pending-required-node-not-available", want2, "PENDING")
    c.run("scancel", half, want2)
    c.wait(lambda: c.nodes().get("node2") == "drained", 30, "node2 drained")
    rec.add("sinfo", "drained", {"nodes": {"node1": "allocated", "node2": "drained"}, "usable": ["node1"]},
            c.run("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    c.run("scontrol", "update", "NodeName=node2", "State=RESUME")
    c.run("scancel", p1)
    c.wait_state(p1, "CANCELLED")
    rec.job("cancelled-while-pending", p1, "CANCELLED", raw="CANCELLED")
    c.run("scancel", r1)
    c.wait_state(r1, "CANCELLED")
    rec.job("cancelled-while-running", r1, "CANCELLED", raw="CANCELLED", exit=0, signal=15)
    c.run("scancel", p2, dep, never, begin, held, user_hold, admin_hold, limit)
    c.wait(lambda: c.nodes() == {"node1": "idle", "node2": "idle"}, 60, "nodes idle")
    # ---- preempted (cancel and requeue), requeued by hand
    low = c.sbatch("-c", "2", "-w", "node1", "-p", "debug")
    low_rq = c.sbatch("-c", "2", "-w", "node2", "-p", "requeue")
    c.wait_state(low, "RUNNING")
    c.wait_state(low_rq, "RUNNING")
    urgent = [c.sbatch("-c", "2", "-w", node, "-p", "urgent", script="sleep 5") for node in NODES]
    c.wait_state(low, "PREEMPTED")
    rec.job("preempted", low, "PREEMPTED", raw="PREEMPTED")
    c.wait(lambda: c.state(low_rq) in ("PENDING", "REQUEUED", "REQUEUE_HOLD"), 30, "requeued by preemption")
    rec.job("preempted-and-requeued", low_rq, "PENDING")
    for job in urgent:
        c.wait_state(job, "COMPLETED", timeout=60)
    c.wait_state(low_rq, "RUNNING", timeout=120)
    rec.job("running-after-requeue", low_rq, "RUNNING", raw="RUNNING", restarts=1)
    c.run("scontrol", "requeue", low_rq)
    c.wait(lambda: c.state(low_rq) in ("PENDING", "REQUEUED", "REQUEUE_HOLD"), 30, "requeued")
    rec.job("requeued", low_rq, "PENDING")
    c.run("scancel", low_rq)
    c.wait(lambda: c.nodes() == {"node1": "idle", "node2": "idle"}, 60, "nodes idle")
    # ---- a time limit, and a node that dies
    slow = c.sbatch("-c", "1", "-w", "node1", "--time=1", "--no-requeue")
    on2 = c.sbatch("-c", "1", "-w", "node2", "--no-requeue")
    on2_rq = c.sbatch("-c", "1", "-w", "node2", "--requeue")
    for job in (slow, on2, on2_rq):
        c.wait_state(job, "RUNNING")
    c.procs["node2"].kill()
    c.wait_state(on2, "NODE_FAIL", timeout=120)
    rec.job("node-fail", on2, "FAILED", raw="NODE_FAIL")
    rec.job("requeued-after-node-fail", on2_rq, "PENDING")
    rec.add("sinfo", "not-responding", {"nodes": {"node1": "mixed", "node2": "down*"}, "usable": ["node1"]},
            c.run("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    cluster_restart_node2(c)
    c.wait_state(slow, "TIMEOUT", timeout=180)
    rec.job("timeout", slow, "FAILED", raw="TIMEOUT")
    acct = c.run("sacct", "-n", "-X", "-P", "-j", slow, "-o", "State,ExitCode")
    rec.add("sacct", "accounting-disabled", {"returncode": acct.returncode, "stderr": acct.stderr.strip(),
                                             "state": None}, acct.stdout)
    rec.add("version", "installed", {"version": None}, c.run("scontrol", "--version").stdout)


def cluster_restart_node2(c: Cluster) -> None:
    """slurmd node2 back: it has the dead node's jobs killed (their steps outlived the SIGKILL)."""
    c.spawn("node2", "slurmd", "-D", "-N", "node2", "-f", str(c.base / "slurm.conf"))


def main() -> int:
    cluster = Cluster()
    try:
        cluster.start()
        rec = Recorder(cluster)
        record(rec)
        version = rec.files["version"][0][2].strip()
        release = ".".join(version.split()[-1].split(".")[:2])
        rec.files["version"][0] = ("installed", {"version": version.split()[-1]}, version)
        rec.write(release, version)
        print(f"wrote tests/data/slurm/{release}/ ({version})")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
