"""Time to recover from a fault on Slurm: a restart inside the allocation against a requeue, side by side.

    python bench/recovery.py                         # both faults, both recoveries, cred_expire 30 s and 120 s
    python bench/recovery.py --faults rank --cred-expire 30

A three-host test cluster (tests/fixtures/hosts.py: each host its own address), the fault job of
the suite (ResNet-50 tiny on synthetic data, 2 ranks on 2 hosts, 2 epochs of 8 steps), and one
fault after the first checkpoint:

* ``rank``: rank 1's process SIGKILLed (detected by the survivor's collective error);
* ``host``: every process of rank 1's host SIGKILLed, slurmd included (a host crash: the
  survivor's collective error, then Slurm's ``SlurmdTimeout`` for the node).

Recovered by a restart inside the allocation (``slurm.restarts_in_allocation: 1``, one spare
node for the host crash) or by a requeue (``restarts_in_allocation: 0``: the batch script's
requeue after a failed rank, Slurm's own after a node failure; a requeued job waits out
``AuthInfo=cred_expire``, 120 s by Slurm's default). The time to recover runs from the fault to
the first optimizer step after it, detection included, read off the job's log as it grows
(polled every 0.2 s). Each row says what detected the fault and the cluster's ``SlurmdTimeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SLURMD_TIMEOUT_S = 20
STEP = re.compile(r"^\[train\] epoch \d+/\d+ step \d+/\d+", re.M)


def cluster(cred_expire_s: int):
    from tests.fixtures.slurm import SlurmCluster

    class Bench(SlurmCluster):
        slurmd_timeout_s = SLURMD_TIMEOUT_S

    Bench.cred_expire_s = cred_expire_s
    found = Bench("b", 3)
    found.start()
    return found


def wait_for(path: Path, pattern: str, timeout: float, start: int = 0) -> tuple[float, int]:
    """When ``pattern`` first appears in ``path`` after offset ``start``: (monotonic time, its offset)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        found = re.search(pattern, text[start:], re.M)
        if found:
            return time.monotonic(), start + found.end()
        time.sleep(0.2)
    raise TimeoutError(f"{pattern!r} not in {path} after {timeout:.0f} s")


def run_one(fault: str, recovery: str, cred_expire_s: int) -> dict:
    from jobs.contract.placement import expand_hostlist  # noqa: F401 - the repository is importable
    from tests.test_slurm_backend import make_profile

    slurm = cluster(cred_expire_s)
    try:
        with tempfile.TemporaryDirectory(prefix="podrun-recovery-") as tmp:
            folder = Path(tmp)
            cluster_file = make_profile(folder, folder)
            env = os.environ | {"PODRUN_HOME": str(folder / "home"), "SLURM_CONF": str(slurm.conf_path),
                                "PYTHONPATH": with_repo(REPO)}
            env.pop("MLFLOW_TRACKING_URI", None)
            inside = recovery == "inside"
            sets = {"cluster": "test", "nodes": 2, "tasks_per_node": 1, "train.epochs": 2, "eval.target": 1.0,
                    "data.backend": "synthetic", "data.synthetic_samples": 512, "train.log_every": 1,
                    "registry": "false", "profile.slurm.restarts_in_allocation": 1 if inside else 0,
                    "profile.slurm.spare_nodes": 1 if inside and fault == "host" else 0,
                    "profile.slurm.max_failures": 0 if inside else 1}
            argv = [sys.executable, "-m", "orchestrator", "launch", "resnet50:tiny", "--cluster-file",
                    str(cluster_file), "--backend", "slurm", "--detach",
                    *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]]
            subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
            state = folder / "state" / "jobs"
            log = next(state.glob("*/logs/slurm-*.out")) if list(state.glob("*/logs/slurm-*.out")) else None
            deadline = time.monotonic() + 120
            while log is None and time.monotonic() < deadline:
                time.sleep(0.5)
                found = list(state.glob("*/logs/slurm-*.out"))
                log = found[0] if found else None
            _, offset = wait_for(log, r"^\[checkpoint\]", 300)
            text = log.read_text()
            rank1 = re.search(r"\[rank 1/2\] pid (\d+) on (\S+)", text)
            hit = time.monotonic()
            if fault == "rank":
                os.kill(int(rank1.group(1)), 9)
            else:
                slurm.hosts.crash(rank1.group(2))
            resumed_at, after = wait_for(log, r"^\[resume\] ", 600, offset)
            stepped_at, _ = wait_for(log, STEP.pattern, 300, after)
            text = log.read_text()
            detected = ("the watchdog" if "[watchdog]" in text else
                        "SlurmdTimeout" if "NODE FAILURE" in text or "Node failure" in text else
                        "the survivor's collective error")
            return {"fault": fault, "recovery": "restart inside the allocation" if inside else "requeue",
                    "cred_expire_s": cred_expire_s, "slurmd_timeout_s": SLURMD_TIMEOUT_S,
                    "to_resume_s": round(resumed_at - hit, 1), "to_first_step_s": round(stepped_at - hit, 1),
                    "detected_by": detected, "load_1m": round(os.getloadavg()[0], 2)}
    finally:
        slurm.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", default="rank,host")
    parser.add_argument("--cred-expire", default="30,120", help="AuthInfo=cred_expire values for the requeue rows")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the start", flush=True)
    creds = [int(value) for value in args.cred_expire.split(",")]
    for fault in args.faults.split(","):
        rows = [("inside", creds[0])] + [("requeue", cred) for cred in creds]
        for recovery, cred in rows:
            print(json.dumps(run_one(fault, recovery, cred)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
