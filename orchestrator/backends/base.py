"""The Backend interface: render / schedule / status / logs / stop.

A backend only decides how ranks start; every rank runs ``python -m jobs.run`` (or the
Ray worker) on the same resolved job. ``submit`` is ``render`` plus ``schedule``, so
``podrun render`` prints exactly what ``podrun launch`` runs. A new backend subclasses
:class:`Backend`, fills in the five abstract methods, and registers one line in
:data:`orchestrator.spec.backend_names.BACKENDS`.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from jobs.contract.job import CONFIG_FILE, dump_resolved, write_resolved
from jobs.contract.private_files import private_dir, write_private
from orchestrator.errors import BackendError, PodrunError
from orchestrator.spec.job_env import check_submission_environment
from orchestrator.spec.jobspec import PLAN_FILE, LaunchPlan, write_plan
from orchestrator.spec.jobstore import FAILED, JobRecord, is_terminal


class Backend(ABC):
    name: str

    @abstractmethod
    def render(self, plan: LaunchPlan) -> str:
        """What would run, as a readable script."""

    @abstractmethod
    def schedule(self, plan: LaunchPlan, record: JobRecord) -> None:
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

    def detach(self, record: JobRecord) -> None:
        """The launcher lets go of a job it started: the job runs on without it.

        Slurm and Ray jobs always do; an attached local job otherwise stops (after a
        checkpoint) when its launcher dies.
        """

    def cancel(self, record: JobRecord) -> None:
        """Stop the job, unless it already ended.

        Raises:
            BackendError: the job already ended, or the scheduler refused.
        """
        record = self.status(record)
        if is_terminal(record.state):
            raise BackendError(f"job {record.job_id} already ended ({record.state})")
        self.stop(record)

    def submit(self, plan: LaunchPlan) -> JobRecord:
        """Write the job's files (resolved config, plan, rendered script, record), then schedule it.

        The record and a copy of the files stay here, under ``$PODRUN_HOME/jobs/<id>``
        (readable by their owner only), whatever cluster runs the job.

        Raises:
            ConfigError: the profile's env reads a variable that is not set here.
            PodrunError: the scheduler refused the job (the record says so too).
        """
        from orchestrator.spec.paths import podrun_home

        check_submission_environment(plan)
        job, job_dir = plan.job, private_dir(podrun_home() / "jobs" / plan.job_id)
        write_resolved(job, job_dir / CONFIG_FILE)
        write_plan(plan, job_dir / PLAN_FILE)
        write_private(job_dir / "render.txt", self.render(plan))
        record = JobRecord(
            job_id=job.job_id, name=job.name, backend=self.name, recipe=job.recipe.name,
            cluster=plan.profile.name, job_dir=str(job_dir), checkpoint_dir=job.checkpoint_dir,
            tracking_uri=job.tracking_uri, world_size=job.world_size,
        )
        record.save()
        try:
            self.schedule(plan, record)
        except PodrunError as exc:
            record.state, record.detail = FAILED, f"submission failed: {exc}"
            record.save()
            raise
        record.save()
        return record


def config_heredoc(plan: LaunchPlan, path: Path | None = None, text: str | None = None) -> list[str]:
    """Shell lines that write the resolved job (or ``text``) to ``path``, so a rendered script runs on its own."""
    import hashlib

    path = path or Path(plan.job.job_dir) / CONFIG_FILE
    text = dump_resolved(plan.job) if text is None else text
    marker = f"PODRUN_CONFIG_{hashlib.sha256(text.encode()).hexdigest()[:8].upper()}"
    while marker in text:
        marker += "_"
    # A quoted delimiter: the shell expands nothing inside the YAML.
    return [f"mkdir -p {shlex.quote(str(path.parent))}", f"cat > {shlex.quote(str(path))} <<'{marker}'",
            text.rstrip("\n"), marker]
