"""Build hook: copy the bundled files into the wheel (everything else is in pyproject.toml).

``cluster.yaml``, ``recipes/`` and ``slurm/`` stay at the top of the repository (the
product's layout); the wheel carries them as ``orchestrator/_bundled/``, where
:mod:`orchestrator.spec.paths` reads them through ``importlib.resources``. An editable install
reads them in place instead. The sdist carries them through MANIFEST.in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED = {"cluster.yaml": None, "recipes": "*.yaml", "slurm": "*.j2"}  # a file, or a folder and its pattern


class BuildWithBundledFiles(build_py):
    """``build_py`` that also copies the bundled files under ``orchestrator/_bundled``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's own files
        target = Path(self.build_lib) / "orchestrator" / "_bundled"
        shutil.rmtree(target, ignore_errors=True)  # no stale file from an earlier build
        for name, pattern in BUNDLED.items():
            sources = [HERE / name] if pattern is None else sorted((HERE / name).rglob(pattern))
            for source in sources:
                dest = target / source.relative_to(HERE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)


setup(cmdclass={"build_py": BuildWithBundledFiles})
