"""What the fault tests share: one tiny job, its uninterrupted result, and ways to watch and hurt processes.

The job is ResNet-50's ``tiny`` preset on synthetic data: 2 ranks, 2 epochs of 8 steps,
a checkpoint at steps 8 and 16, target unreachable (it exits 2). ``reference`` runs it once
per test process, uninterrupted; every fault test ends by comparing its own final
checkpoint with it (weights bit for bit, and the evaluations).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.contract import exit_codes
from jobs.rank.checkpoint import latest_checkpoint, load_checkpoint
from orchestrator.spec.jobstore import list_records
from tests.waiting import wait_for_text, wait_until

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 8
SETTINGS = ["--set", "train.epochs=2", "--set", "eval.target=1.0", "--set", "data.backend=synthetic",
            "--set", "data.synthetic_samples=512", "--set", "train.log_every=1",
            "--set", "train.stop_check_every=1"]  # a fault injected at a known step is seen at that step
LOCAL_JOB = ["resnet50:tiny", "--set", "tasks_per_node=2", *SETTINGS]


def podrun(*argv: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen:
    """``podrun ARGV`` in its own process (and session), as a user would start it."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *argv], env=env, cwd=REPO,
                            start_new_session=True, **kwargs)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final checkpoint of the fault job run once, start to end, with nothing going wrong.

    Under pytest-xdist the workers share one run (the first one to need it makes it).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, the same for every worker
    with open(shared / "fault-reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        home = shared / "fault-reference"
        if not list_records(home):
            run_reference(home)
    (record,) = list_records(home)
    return final_state(record.checkpoint_dir) | {"checkpoint_dir": record.checkpoint_dir}


def run_reference(home: Path) -> None:
    env = os.environ | {"PODRUN_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = podrun("launch", *LOCAL_JOB, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != exit_codes.NOT_REACHED:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"the reference run failed:\n{out[-3000:]}")


def final_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = latest_checkpoint(Path(checkpoint_dir))
    assert path is not None, f"no checkpoint in {checkpoint_dir}"
    return load_checkpoint(path)


def assert_same_result(checkpoint_dir: str | Path, reference: dict[str, Any]) -> None:
    """The run in ``checkpoint_dir`` ended where the uninterrupted one did: same step, evals, weights."""
    got = final_state(checkpoint_dir)
    assert got["progress"]["global_step"] == reference["progress"]["global_step"] == 2 * STEPS_PER_EPOCH
    assert got["progress"]["evals"] == reference["progress"]["evals"]
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, got["model"][name]), name


def rank_pids(job_dir: str | Path) -> list[int]:
    path = Path(job_dir) / "ranks.json"
    wait_until(path.exists, f"{path}", 120)
    return json.loads(path.read_text())["ranks"]


def job_processes(job_dir: str | Path) -> list[int]:
    """Processes still running anything of this job (supervisor, ranks, MLflow sender)."""
    marker = str(job_dir).encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes() and Path(cmdline.parent, "stat").read_text().split()[2] != "Z":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def wait_for_step(log: Path, epoch: int, step: int, timeout: float = 300) -> None:
    wait_for_text(log, f"[train] epoch {epoch}/2 step {step}/{STEPS_PER_EPOCH} ", timeout)


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class FileCreations:
    """inotify: the names created in one folder, as they are created (to catch a write in the act)."""

    IN_CREATE = 0x100

    def __init__(self, folder: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Block until a file whose name starts with ``prefix`` is created; return its name."""
        deadline = os.times().elapsed + timeout
        while os.times().elapsed < deadline:
            if not select.select([self.fd], [], [], 1.0)[0]:
                continue
            data = os.read(self.fd, 65536)
            while data:
                _, _, _, length = struct.unpack("iIII", data[:16])
                name = data[16:16 + length].split(b"\0")[0].decode()
                data = data[16 + length:]
                if name.startswith(prefix):
                    return name
        raise AssertionError(f"no file {prefix}* created within {timeout:.0f} s")

    def close(self) -> None:
        os.close(self.fd)

