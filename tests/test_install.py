"""podrun as a user installs it: a wheel that works outside the repository, and an install
that leaves a GPU container's own torch and numpy alone.

The wheel is built from a copy of the source tree (``pip wheel --no-deps``) and installed into
fresh virtual environments. No multi-GB download: the first test's environment borrows
podrun's dependencies from the interpreter running the tests through a ``.pth`` line (the
wheel itself goes in with ``--no-deps``, so podrun comes only from the wheel). The second
test stands in for ``nvcr.io/nvidia/pytorch:25.01-py3`` (the image of the ``dgx2`` and
``superpod`` profiles): a metadata-only ``torch`` with NVIDIA's version string, plus the image's
numpy and pandas; pip decides what to replace from names and versions alone, so the stand-in
is enough for the question asked, and a plain ``torch>=2.6`` or ``torch==2.13.0`` fails it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.spec.jobstore import SUCCEEDED

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "cluster.yaml", "jobs", "orchestrator",
           "recipes", "slurm"]
# What nvcr.io/nvidia/pytorch:25.01-py3 ships (NVIDIA's release notes and records of the image).
NGC_TORCH = "2.6.0a0+ecf3bae40a.nv25.01"
NGC_KEPT = {"torch": NGC_TORCH, "numpy": "1.26.4", "pandas": "2.2.3"}

pytestmark = pytest.mark.slow


def run(argv: list, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env() -> dict[str, str]:
    """This environment without the repository on the path (PYTHONPATH) or podrun's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PODRUN_", "PYTHON", "MLFLOW_", "XDG_"))}


def pip(venv: Path, *args: object) -> subprocess.CompletedProcess:
    """This interpreter's pip, working on ``venv`` (which has no pip of its own)."""
    return run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "--disable-pip-version-check",
                *args], env=clean_env())


def new_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", "--without-pip", path])
    return path


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def borrow_dependencies(venv: Path) -> None:
    """Give ``venv`` this interpreter's packages, after its own, except podrun itself (an editable install).

    A ``.pth`` line names a folder of links to them, so nothing here is copied or changed.
    """
    view = venv / "borrowed"
    view.mkdir()
    for folder in map(Path, site.getsitepackages()):
        for entry in folder.iterdir():
            if not entry.name.startswith(("podrun", "__editable__")) and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    (site_packages(venv) / "podrun-test-deps.pth").write_text(f"{view}\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """podrun's wheel, built from a copy of the working tree (the build writes build/ next to its input)."""
    tree, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
        else:
            shutil.copy(source, tree / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, tree],
        env=clean_env())
    (built,) = out.glob("podrun-*.whl")
    return built


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user in a fresh shell: no repository on the path, an empty home."""
    home.mkdir(parents=True, exist_ok=True)
    return clean_env() | {"HOME": str(home), "PYTHONNOUSERSITE": "1"}


def test_the_wheel_works_outside_the_repository(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    for bundled in ("cluster.yaml", "recipes/resnet50.yaml", "recipes/jobs/resnet50-tiny.yaml", "slurm/job.sbatch.j2"):
        assert f"orchestrator/_bundled/{bundled}" in names
    venv = new_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", "-q", wheel)
    borrow_dependencies(venv)
    work, env = tmp_path / "empty", user_env(tmp_path / "user")
    work.mkdir()
    podrun = [venv / "bin" / "podrun"]

    code = "import jobs, orchestrator; print(jobs.__file__, orchestrator.__file__)"
    where = run([venv / "bin" / "python", "-c", code], cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site_packages(venv)) for p in where), where

    script = run([*podrun, "render", "resnet50:dgx2", "--set", "cluster=dgx2"], cwd=work, env=env).stdout
    assert "#SBATCH --gpus-per-node=16" in script and "--container-image='nvcr.io#nvidia/pytorch:" in script
    assert "_bundled/cluster.yaml (bundled)" in script and "_bundled/recipes/resnet50.yaml (bundled)" in script
    assert str(REPO) not in script and "git_sha: unknown" in script

    run([*podrun, "init"], cwd=work, env=env)
    run([*podrun, "data", "digits", "data/digits"], cwd=work, env=env)
    launch = run([*podrun, "launch", "resnet50-tiny.yaml"], cwd=work, env=env, timeout=900).stdout
    (record,) = (work / ".podrun" / "jobs").glob("*/job.json")
    assert json.loads(record.read_text())["state"] == SUCCEEDED, launch[-3000:]


def metadata_only_wheel(name: str, version: str, out: Path) -> Path:
    """A wheel holding just ``name``'s metadata and an empty package: what pip sees of an installed build."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f'__version__ = "{version}"\n',
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: podrun-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = {n: base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=").decode()
              for n, t in files.items()}
    files[f"{dist}/RECORD"] = "".join(f"{n},sha256={digest[n]},{len(t.encode())}\n" for n, t in files.items())
    files[f"{dist}/RECORD"] += f"{dist}/RECORD,,\n"
    path = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def builds(venv: Path) -> dict[str, tuple[str, str]]:
    """Version and RECORD digest of each kept package: a reinstall of the same version changes the digest."""
    found = {}
    for name in NGC_KEPT:
        (info,) = site_packages(venv).glob(f"{name}-*.dist-info")
        found[name] = (info.name, hashlib.sha256((info / "RECORD").read_bytes()).hexdigest())
    return found


def test_installing_podrun_leaves_the_containers_torch_and_numpy_alone(wheel, tmp_path):
    venv = new_venv(tmp_path / "container")
    stand_in = metadata_only_wheel("torch", NGC_TORCH, tmp_path)
    pip(venv, "install", "-q", stand_in, *(f"{n}=={v}" for n, v in NGC_KEPT.items() if n != "torch"))
    before = builds(venv)
    assert before["torch"][0] == f"torch-{NGC_TORCH}.dist-info"

    # What a real install would do, resolved against the index with only the image's packages present.
    report = tmp_path / "report.json"
    pip(venv, "install", "--dry-run", "-q", "--report", report, wheel)
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "podrun" in planned
    # nvidia-ml-py is NVML's pure-Python binding (preflight's GPU checks), not a CUDA or NCCL build
    cuda_builds = {n: v for n, v in planned.items() if n.startswith("nvidia-") and n != "nvidia-ml-py"}
    assert not {n: v for n, v in planned.items() if n in NGC_KEPT} and not cuda_builds, planned

    # The real install; the other dependencies come from this interpreter's site-packages (after the venv's own).
    borrow_dependencies(venv)
    pip(venv, "install", "-q", wheel)
    assert builds(venv) == before
    assert list(site_packages(venv).glob("podrun-*.dist-info"))
