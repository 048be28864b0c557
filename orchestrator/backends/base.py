"""The Backend interface: render / submit / status / logs / cancel.

A backend only decides how ranks start. ``submit`` is ``render`` plus scheduling, so
``podrun render`` prints exactly what ``podrun launch`` runs.
"""

from __future__ import annotations

import importlib
import shlex
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

from jobs.run import write_resolved
from orchestrator.config import ResolvedJob
from orchestrator.errors import BackendError, PodrunError
from orchestrator.jobstore import FAILED, JobRecord, is_terminal

BACKENDS = {
    "local": "orchestrator.backends.local:LocalBackend",
    "slurm": "orchestrator.backends.slurm:SlurmBackend",
    "ray": "orchestrator.backends.ray_backend:RayBackend",
}


class Backend(ABC):
    name: str

    @abstractmethod
    def render(self, job: ResolvedJob) -> str:
        """What would run, as a readable script."""

    @abstractmethod
    def schedule(self, job: ResolvedJob, record: JobRecord) -> None:
        """Start the rendered job; fill in ``record.native_id``."""

    @abstractmethod
    def status(self, record: JobRecord) -> JobRecord:
        """Refresh ``record.state`` from the scheduler."""

    @abstractmethod
    def logs(self, record: JobRecord, rank: int = 0, follow: bool = False) -> Iterator[str]:
        """Lines of a rank's log."""

    @abstractmethod
    def stop(self, record: JobRecord) -> None:
        """Ask the scheduler to stop a running job (ranks get SIGTERM and checkpoint)."""

    def cancel(self, record: JobRecord) -> None:
        """Stop the job, unless it already ended.

        Raises:
            BackendError: the job already ended, or the scheduler refused.
        """
        record = self.status(record)
        if is_terminal(record.state):
            raise BackendError(f"job {record.job_id} already ended ({record.state})")
        self.stop(record)

    def submit(self, job: ResolvedJob) -> JobRecord:
        """Write the job's files (resolved config, rendered script, record), then schedule it.

        The record and a copy of the files stay here, under ``$PODRUN_HOME/jobs/<id>``,
        whatever cluster runs the job.
        """
        from orchestrator.resolve import podrun_home

        job_dir = podrun_home() / "jobs" / job.job_id
        write_resolved(job, job_dir / "config.resolved.yaml")
        (job_dir / "render.txt").write_text(self.render(job))
        record = JobRecord(
            job_id=job.job_id, name=job.job.name, backend=self.name, recipe=job.recipe.name,
            cluster=job.profile.name, job_dir=str(job_dir), checkpoint_dir=job.checkpoint_dir,
            tracking_uri=job.tracking_uri, world_size=job.world_size,
        )
        record.save()
        try:
            self.schedule(job, record)
        except PodrunError as exc:
            record.state, record.detail = FAILED, f"submission failed: {exc}"
            record.save()
            raise
        record.save()
        return record


def config_heredoc(job: ResolvedJob) -> list[str]:
    """Shell lines that write the job's resolved config, so a rendered script runs on its own."""
    import hashlib

    import yaml

    path = Path(job.job_dir) / "config.resolved.yaml"
    text = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    marker = f"PODRUN_CONFIG_{hashlib.sha256(text.encode()).hexdigest()[:8].upper()}"
    while marker in text:
        marker += "_"
    # A quoted delimiter: the shell expands nothing inside the YAML.
    return [f"mkdir -p {shlex.quote(str(path.parent))}", f"cat > {shlex.quote(str(path))} <<'{marker}'",
            text.rstrip("\n"), marker]


def get_backend(name: str) -> Backend:
    """Import and build a backend by name (imported lazily: Ray only loads when Ray is used).

    Raises:
        PodrunError: the backend is unknown or not available in this version.
    """
    if name not in BACKENDS:
        raise PodrunError(f"backend '{name}' is not available; available: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
