"""The build prints no deprecation warning: ``pip wheel`` and ``pip install -e .`` with warnings as errors.

setuptools warned on every build that ``project.license`` as a TOML table is deprecated and
unsupported from 2027-02-18. The license is now an SPDX expression with ``license-files``
(setuptools >= 77, PEP 639). The wheel is built from a copy of the tree, as in
``tests/test_install.py``, without build isolation (nothing is downloaded): about 3 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.test_install import SOURCES

pytestmark = pytest.mark.fast  # builds a wheel; starts no cluster, server or training job

REPO = Path(__file__).resolve().parent.parent
# The backend's editable build, as ``pip install -e .`` runs it; setuptools' InformationOnly
# notice ("Editable installation ...") is not a warning about the project.
EDITABLE = """
import sys, warnings
warnings.simplefilter("error")
from setuptools.warnings import InformationOnly
warnings.filterwarnings("ignore", category=InformationOnly)
from setuptools import build_meta
print(build_meta.build_editable(sys.argv[1]))
"""


def source_copy(tree: Path) -> Path:
    tree.mkdir()
    for name in [*SOURCES, "LICENSE"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
        else:
            shutil.copy(source, tree / name)
    return tree


def build(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PODRUN_"))} | {"PYTHONWARNINGS": "error"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    assert "deprecat" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    return proc


def test_the_wheel_and_the_editable_install_build_with_warnings_as_errors(tmp_path):
    tree, out = source_copy(tmp_path / "src"), tmp_path / "dist"
    build([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
           "-q", "-w", str(out), str(tree)], cwd=tmp_path)
    (wheel,) = out.glob("podrun-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("podrun-0.1.0.dist-info/METADATA").decode()
        assert "podrun-0.1.0.dist-info/licenses/LICENSE" in archive.namelist()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    build([sys.executable, "-c", EDITABLE, str(tmp_path / "editable")], cwd=tree)
    assert list((tmp_path / "editable").glob("podrun-*.editable-*.whl"))


def test_the_build_system_asks_for_a_setuptools_that_reads_an_spdx_license():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0" and project["project"]["license-files"] == ["LICENSE"]
    assert project["build-system"]["requires"] == ["setuptools>=77"]
    assert "Apache License" in (REPO / "LICENSE").read_text()
