"""Checkpoints cannot run code: written as tensors and plain data, loaded with ``weights_only=True``.

A checkpoint folder on shared storage is writable by whoever the file system lets write it,
and a ``.sha256`` beside a file proves it intact, not who wrote it. So a planted checkpoint
(a valid checksum, a pickle that would create a file) is refused with exit 64 and the file is
never created; the launcher refuses what it can see without torch, a rank refuses the rest.
Checkpoints of the previous format (numpy's RNG state as a numpy array) still resume.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import checksum_path, file_sha256
from jobs.contract.errors import UntrustedCheckpointError
from jobs.rank.checkpoint import load_checkpoint, load_resumable, save_checkpoint
from jobs.rank.rng import rng_state, set_rng_state
from orchestrator.cli import main
from tests.conftest import REPO

NOBODY = 65534


@pytest.fixture(autouse=True)
def usual_umask():
    """Files and folders made here are the user's and writable by nobody else, whatever umask CI has."""
    old = os.umask(0o022)
    yield
    os.umask(old)


class Payload:
    """Pickles as a call of ``call[0](*call[1])``: what a planted checkpoint would run when unpickled."""

    def __init__(self, call: tuple) -> None:
        self.call = call

    def __reduce__(self) -> tuple:
        return self.call


def touch_call(marker: Path) -> tuple:
    return os.system, (f"touch {marker}",)


def torch_save_call(marker: Path) -> tuple:
    """A call inside torch (the launcher's torch-free look lets torch.* names through; a rank does not)."""
    return torch.save, ({"ran": True}, str(marker))


def plant(folder: Path, step: int, call: tuple, protocol: int = 2) -> Path:
    """A checkpoint with a valid checksum whose pickle makes ``call``."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"ckpt-{step:09d}.pt"
    torch.save({"model": Payload(call), "progress": {"epoch": 1}}, path, pickle_protocol=protocol)
    checksum_path(path).write_text(f"{file_sha256(path)}  {path.name}\n")
    return path


def trainer_state() -> dict:
    """What :class:`jobs.train.Trainer` saves, for a small model."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {},
            "progress": {"epoch": 1, "evals": [[1, 0.5]], "phases": {"compute": 1.0}}, "rng": [rng_state()],
            "job_id": "x"}


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item()


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("podrun: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- the format


@pytest.mark.fast
def test_a_checkpoint_loads_with_weights_only_and_restores_every_stream(tmp_path):
    np.random.randn()  # numpy caches the second gaussian: its state then has has_gauss=1
    random.gauss(0, 1)
    state = trainer_state()
    expected = draws()
    path = save_checkpoint(tmp_path / "ckpt", state, 7)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    loaded = torch.load(path, weights_only=True)  # torch's own unpickler, nothing allowed beyond its defaults
    assert isinstance(loaded["rng"][0]["python"], list) and isinstance(loaded["rng"][0]["python"][1], list)
    assert loaded["rng"][0]["numpy"]["keys"].dtype == torch.int64
    set_rng_state(load_checkpoint(path)["rng"], 0, 1)
    assert draws() == expected


@pytest.mark.fast
def test_a_checkpoint_of_the_previous_format_still_resumes(tmp_path):
    state = trainer_state()
    # the previous rng_state(): numpy's and python's own tuples
    state["rng"] = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]
    expected = draws()
    path = save_checkpoint(tmp_path / "ckpt", state, 3)
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)  # numpy's array needs its two types allowed
    found = load_resumable(tmp_path / "ckpt")
    assert found is not None and found[0] == path
    set_rng_state(found[1]["rng"], 0, 1)
    assert draws() == expected


@pytest.mark.fast
def test_no_source_loads_a_checkpoint_unsafely():
    unsafe = "weights_only" + "=False"
    proc = subprocess.run(["grep", "-rn", "--include=*.py", unsafe, "jobs", "orchestrator", "bench", "tests"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.stdout == "", proc.stdout


# --------------------------------------------------------------------------- planted checkpoints


@pytest.mark.fast
@pytest.mark.parametrize("protocol", [2, 4], ids=["global", "stack-global"])
def test_resume_refuses_a_planted_checkpoint_before_launch(capsys, podrun_home, tmp_path, protocol):
    marker = tmp_path / "planted-ran"
    folder = podrun_home / "checkpoints" / "resnet50-tiny" / "planted"
    plant(folder, 44, touch_call(marker), protocol)
    err = one_line_error(capsys, ["launch", "resnet50:tiny", "--resume", "planted"])
    assert "ckpt-000000044.pt: refused: its pickle needs more than tensors" in err
    assert ("posix.system" if protocol == 2 else "STACK_GLOBAL") in err
    assert not marker.exists()
    assert not list(podrun_home.glob("jobs/*/job.json"))  # nothing was submitted


@pytest.mark.fast
@pytest.mark.parametrize("make_call", [touch_call, torch_save_call], ids=["os.system", "torch.save"])
def test_a_rank_refuses_a_planted_checkpoint_and_does_not_fall_back(tmp_path, make_call):
    marker = tmp_path / "planted-ran"
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, trainer_state(), 10)  # a good, older one: not taken instead
    planted = plant(folder, 20, make_call(marker))
    with pytest.raises(UntrustedCheckpointError) as refused:
        load_resumable(folder)
    message = str(refused.value)
    assert message.startswith(f"{planted}: refused:") and "\n" not in message
    assert refused.value.exit_code == exit_codes.CONFIG_ERROR
    assert not marker.exists()


def test_a_rank_started_by_resume_refuses_what_the_launcher_let_through(local_env, tmp_path):
    """The launcher's look lets torch.* names pass; the rank's weights-only load refuses torch.save: exit 64."""
    marker = tmp_path / "planted-ran"
    plant(local_env / "checkpoints" / "resnet50-tiny" / "planted", 44, torch_save_call(marker))
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "resnet50:tiny", "--resume", "planted"],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == exit_codes.CONFIG_ERROR, out[-3000:]
    assert "refused: its pickle needs more than tensors" in out and "torch.serialization.save" in out
    assert "Traceback" not in out
    assert not marker.exists()


# --------------------------------------------------------------------------- who may write the folder


@pytest.mark.fast
@pytest.mark.parametrize("what,mode", [("folder", "770"), ("folder", "707"), ("file", "664"), ("file", "646")])
def test_resume_refuses_a_folder_or_checkpoint_others_may_write(capsys, podrun_home, what, mode):
    folder = podrun_home / "checkpoints" / "resnet50-tiny" / "shared"
    path = save_checkpoint(folder, trainer_state(), 5)
    target = folder if what == "folder" else path
    target.chmod(int(mode, 8))
    err = one_line_error(capsys, ["launch", "resnet50:tiny", "--resume", "shared"])
    assert f"{target}: refused: " in err and "may write it" in err and f"chmod go-w {target}" in err
    with pytest.raises(UntrustedCheckpointError, match="may write it"):
        load_resumable(folder)  # a rank refuses it too (a Slurm job resumed without the launcher)
    target.chmod(0o700 if what == "folder" else 0o600)
    assert load_resumable(folder)[0] == path


@pytest.mark.fast
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("what", ["folder", "file"])
def test_resume_refuses_a_folder_or_checkpoint_owned_by_another_user(capsys, podrun_home, what):
    folder = podrun_home / "checkpoints" / "resnet50-tiny" / "theirs"
    path = save_checkpoint(folder, trainer_state(), 5)
    target = folder if what == "folder" else path
    os.chown(target, NOBODY, -1)
    err = one_line_error(capsys, ["launch", "resnet50:tiny", "--resume", "theirs"])
    assert f"{target}: refused: it is owned by " in err and f"uid {NOBODY}" in err
    with pytest.raises(UntrustedCheckpointError, match="owned by"):
        load_checkpoint(path) if what == "file" else load_resumable(folder)
