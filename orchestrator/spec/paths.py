"""Where podrun finds its files: one search order, the same for every kind of file.

    cluster file   --cluster-file, $PODRUN_CLUSTER_FILE, ./cluster.yaml,
                   <config>/cluster.yaml, then the bundled cluster.yaml
    recipe NAME    a path to a .yaml file, ./recipes/NAME.yaml, <config>/recipes/NAME.yaml,
                   then the bundled recipes/NAME.yaml
    job spec REF   REF as given, then REF (or recipes/jobs/REF) under <config>/, then bundled

``<config>`` is ``$XDG_CONFIG_HOME/podrun`` (default ``~/.config/podrun``). The first file
found is used whole: a user's cluster file replaces the bundled one, and a user's recipe
shadows the bundled recipe of the same name. The sbatch templates are always the bundled
``slurm/*.j2``.

The bundled files are the repository's ``cluster.yaml``, ``recipes/`` and ``slurm/``. The
build (``setup.py``) copies them into the wheel as ``orchestrator/_bundled/``, where they are
read through :mod:`importlib.resources`; a checkout (editable install, or ``PYTHONPATH``)
reads them in place.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from orchestrator.errors import ConfigError

BUNDLED_DIR = "_bundled"  # orchestrator/_bundled in the wheel; setup.py fills it
INIT_JOB = "resnet50-tiny"  # the job spec `podrun init` copies by default


class Source(NamedTuple):
    """A file podrun read, and which step of the search order found it."""

    path: Path
    origin: str

    def __str__(self) -> str:
        return f"{display(self.path)} ({self.origin})"


def checkout_root() -> Path | None:
    """podrun's repository when it runs from a checkout (editable or ``PYTHONPATH``), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "slurm").is_dir() else None


def bundled_root() -> Path:
    """The folder that holds the bundled ``cluster.yaml``, ``recipes/`` and ``slurm/``.

    Raises:
        ConfigError: an installed podrun whose wheel lacks them (built without setup.py).
    """
    packaged = resources.files("orchestrator").joinpath(BUNDLED_DIR)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    root = checkout_root()
    if root is None:
        raise ConfigError(f"podrun's bundled files are missing ({packaged}): reinstall podrun from a wheel "
                          "built from its repository (pip wheel . builds one)")
    return root


def config_dir() -> Path:
    """The user's podrun folder: ``$XDG_CONFIG_HOME/podrun``, default ``~/.config/podrun``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "podrun"


def run_dir() -> Path:
    """Where the ranks and the local supervisor run: the checkout, or (installed) this folder.

    An installed podrun's ranks (``python -m jobs.run``) import it from site-packages, so
    they need no particular folder; they must not run inside site-packages.
    """
    return checkout_root() or Path.cwd()


def package_dirs() -> list[Path]:
    """The folders of podrun's two packages (``jobs``, ``orchestrator``), e.g. for Ray's py_modules."""
    orchestrator = Path(__file__).resolve().parents[1]
    return [orchestrator.parent / "jobs", orchestrator]


def _roots() -> list[tuple[Path, str]]:
    return [(config_dir(), "user config"), (bundled_root(), "bundled")]


def find_cluster_file(explicit: str | None = None) -> Source:
    """The cluster file, in the search order above.

    Raises:
        ConfigError: ``--cluster-file`` or ``$PODRUN_CLUSTER_FILE`` names a missing file.
    """
    for value, origin in ((explicit, "--cluster-file"), (os.environ.get("PODRUN_CLUSTER_FILE"),
                                                           "$PODRUN_CLUSTER_FILE")):
        if value:
            path = Path(value).expanduser()
            if not path.exists():  # a folder or a device: jobs.contract.yaml_guard says so when it is read
                raise ConfigError(f"{origin} {value}: file not found")
            return Source(Path(value).expanduser(), origin)
    if Path("cluster.yaml").is_file():
        return Source(Path("cluster.yaml"), "working folder")
    for root, origin in _roots():
        if (root / "cluster.yaml").is_file():
            return Source(root / "cluster.yaml", origin)
    raise ConfigError(f"no cluster file: create one with 'podrun init', or put one at {config_dir()}/cluster.yaml")


def find_recipe(name: str) -> Source:
    """A recipe: a path to a .yaml file, or NAME looked up as ``recipes/NAME.yaml`` in the search order.

    Raises:
        ConfigError: no such recipe; the message lists the known ones.
    """
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Source(Path(name), "as given")
    for root, origin in [(Path("."), "working folder"), *_roots()]:
        path = root / "recipes" / f"{name}.yaml"
        if path.is_file():
            return Source(path, origin)
    raise ConfigError(f"recipe '{name}' not found; known recipes: {', '.join(known_recipes()) or 'none'}")


def known_recipes() -> list[str]:
    """Every recipe name the search order can find."""
    roots = [Path("."), *(root for root, _ in _roots())]
    return sorted({p.stem for root in roots for p in (root / "recipes").glob("*.yaml")})


def find_job_spec(ref: str) -> Source | None:
    """A job spec file: REF as given, else REF or ``recipes/jobs/REF`` under the user's and the bundled files."""
    path = Path(ref).expanduser()
    if path.is_file():
        return Source(path, "as given")
    if path.is_absolute() or path.suffix not in (".yaml", ".yml"):
        return None
    relatives = [path] if len(path.parts) > 1 else [path, Path("recipes", "jobs", path)]
    for root, origin in _roots():
        for relative in relatives:
            if (root / relative).is_file():
                return Source(root / relative, origin)
    return None


def bundled_job_specs() -> list[str]:
    """The names of the bundled job specs (``recipes/jobs/*.yaml``)."""
    return sorted(p.stem for p in (bundled_root() / "recipes" / "jobs").glob("*.yaml"))


def template_dir() -> Path:
    """The sbatch templates (``slurm/*.j2``)."""
    return bundled_root() / "slurm"


def display(path: Path) -> str:
    """A path as a user would type it: relative to this folder, under ``~``, or absolute."""
    path = Path(path).absolute()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)


def annotate(script: str, sources: dict[str, str]) -> str:
    """``script`` with one ``# podrun read: ...`` comment per file, after its ``#!`` line."""
    if not sources:
        return script
    head, sep, rest = script.partition("\n") if script.startswith("#!") else ("", "", script)
    notes = "".join(f"# podrun read: {kind} {where}\n" for kind, where in sources.items())
    return f"{head}{sep}{notes}{rest}"


def init_files(dest: Path, job: str = INIT_JOB, force: bool = False) -> list[Path]:
    """Copy the bundled ``cluster.yaml`` and job spec ``job`` into ``dest`` to edit.

    Raises:
        ConfigError: an unknown job spec, or a target exists and ``force`` is False (nothing is copied).
    """
    spec = bundled_root() / "recipes" / "jobs" / f"{job}.yaml"
    if not spec.is_file():
        raise ConfigError(f"no bundled job spec '{job}'; bundled: {', '.join(bundled_job_specs())}")
    copies = [(bundled_root() / "cluster.yaml", dest / "cluster.yaml"), (spec, dest / spec.name)]
    existing = [str(target) for _, target in copies if target.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already there: edit them, or use --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    for source, target in copies:
        shutil.copyfile(source, target)
    return [target for _, target in copies]


def podrun_home() -> Path:
    """Where job records, the default MLflow store and checkpoints live (``$PODRUN_HOME``)."""
    return Path(os.environ.get("PODRUN_HOME", ".podrun")).resolve()
