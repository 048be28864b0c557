"""The Slurm backend: an sbatch script from ``slurm/job.sbatch.j2``, submitted here or over SSH.

Slurm only changes how ranks start: ``srun`` starts one ``python -m jobs.run`` per GPU,
and each rank reads its rank from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``.
Status works with accounting off (``squeue``, then ``scontrol show job``, then ``sacct``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2

from jobs.contract import exit_codes
from jobs.contract.job import CONFIG_FILE
from jobs.rank.stragglers import STATUS_FILE as STRAGGLERS_FILE
from jobs.rank.stragglers import status_note as straggler_note
from jobs.rank.watchdog import collective_fault_env
from jobs.tracking.spool import META_FILE as SPOOL_META
from jobs.tracking.spool import Spool, registering, with_registering_note
from orchestrator.backends.base import Backend, config_heredoc
from orchestrator.backends.slurm_submit import submission_mark, submit_once
from orchestrator.backends.ssh_retry import retrying
from orchestrator.backends.tunnel import Tunnel, open_tunnel
from orchestrator.errors import BackendError, ConfigError
from orchestrator.spec.job_env import env_key, expected_comment, shell_word, submission_environment
from orchestrator.spec.jobspec import PLAN_FILE, LaunchPlan, dump_plan
from orchestrator.spec.jobstore import PENDING, RUNNING, UNKNOWN, JobRecord, is_terminal
from orchestrator.spec.paths import checkout_root, run_dir, template_dir
from orchestrator.spec.profiles import LoginConfig
from orchestrator.spec.slurm_status import (
    RANKS_ENDED_FILE,
    SlurmOutputError,
    allocation_end,
    ask_version,
    parse_sacct_jobs,
    parse_scontrol_jobs,
    parse_squeue_jobs,
    summarize,
)
from orchestrator.spec.slurm_status import SLURM_STATES as SLURM_STATES  # Slurm's job states to podrun's
from orchestrator.spec.slurm_status import parse_sbatch_id as parse_sbatch_id
from orchestrator.spec.slurm_status import parse_scontrol as parse_scontrol
from orchestrator.spec.slurm_status import slurm_time as slurm_time

VERSION = "0.1.0"


# What squeue says when slurmctld is down or restarting (the job itself runs on).
END_TIME = re.compile(r"\bEndTime=(\S+)")
CONTROLLER_DOWN = re.compile(r"contact slurm controller|Socket timed out|Connection refused|Zero Bytes were "
                             r"transmitted")


def sbatch_value(value: object) -> str:
    """A value for an ``#SBATCH`` line: one line, double-quoted when it holds spaces or quotes.

    Raises:
        ConfigError: the value spans lines (it could smuggle a command into the script).
    """
    text = str(value)
    if any(c in text for c in "\n\r\x00"):
        raise ConfigError(f"{text!r}: an #SBATCH value must be one line")
    if re.search(r"[\s\"'\\$`]", text):
        return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'
    return text


STEP_GRACE_S = 10  # after the ranks said they failed, how long their step may linger before the script ends it


def comment_text(value: object) -> str:
    """A value inside a ``#`` comment: on one line (a newline would end the comment and start a command)."""
    return str(value).replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir()), trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["shell_word"] = shell_word  # quoted, but ${VAR} expands when the script runs
    env.filters["env_key"] = env_key  # a variable name, or the render stops
    env.filters["sbatch"] = sbatch_value
    env.filters["comment"] = comment_text
    return env


def job_environment(plan: LaunchPlan) -> dict[str, str]:
    """The variables the script exports: NCCL/IB settings, timeouts, then the profile's own (``${VAR}`` kept)."""
    env = {**collective_fault_env(), "NCCL_DEBUG": "WARN", "PYTHONUNBUFFERED": "1"}
    env.update(plan.profile.interconnect.env)
    env.update(plan.profile.env)
    return env


def _header(plan: LaunchPlan) -> dict[str, object]:
    """What both templates name in their header and #SBATCH lines."""
    job, job_dir = plan.job, Path(plan.job.job_dir)
    return dict(version=VERSION, job_id=job.job_id, recipe=job.recipe.name, preset=job.preset,
                profile=plan.profile.name, name=job.name, nodes=job.nodes, world_size=job.world_size,
                gpus=job.tasks_per_node if job.device == "cuda" else 0, slurm=plan.profile.slurm,
                log_dir=str(job_dir / "logs"), script_path=str(job_dir / "job.sbatch"), job_dir=str(job_dir),
                env=job_environment(plan), python=plan.profile.slurm.python,
                expected="\n".join(expected_comment(job_environment(plan))))


def render_sbatch(plan: LaunchPlan) -> str:
    """The sbatch script for the plan (the job's files live in ``job_dir`` on the cluster)."""
    job, slurm, profile = plan.job, plan.profile.slurm, plan.profile
    cpus = slurm.cpus_per_task or (profile.cpus_per_node // job.tasks_per_node if profile.cpus_per_node else None)
    return _environment().get_template("job.sbatch.j2").render(
        **_header(plan), tasks_per_node=job.tasks_per_node, cpus_per_task=cpus, container=profile.container,
        log_pattern="%A_%a" if slurm.array else "%j", config_path=str(Path(job.job_dir) / CONFIG_FILE),
        config_heredoc="\n".join(config_heredoc(plan)), workdir=_workdir(plan), comm=job.comm,
        preflight=job.preflight, preflight_gate=profile.preflight, preflight_gate_dir=slurm.workdir or str(run_dir()),
        ranks_ended_file=RANKS_ENDED_FILE, **_retry_settings(slurm),
    )


def _retry_settings(slurm) -> dict[str, object]:
    """The restart loop's settings: spares, restarts inside the allocation and the exit-code policy."""
    policy = slurm.retry_policy()
    codes = sorted((code, action) for code, action in policy.items() if code != "signal")
    return dict(spare_nodes=slurm.spare_nodes, restarts_in_allocation=slurm.restarts_in_allocation,
                on_exit=[(str(code), action) for code, action in sorted(codes, key=lambda item: int(item[0]))],
                on_exit_signal=policy["signal"], on_exit_other="requeue", step_grace_s=STEP_GRACE_S)


def render_ray_sbatch(plan: LaunchPlan) -> str:
    """An sbatch script that starts a Ray cluster in the allocation and runs the job on it."""
    from orchestrator.backends.ray_runtime import PLAN_ENV, runtime_env

    slurm, profile = plan.profile.slurm, plan.profile
    workdir = slurm.workdir or str(run_dir())  # Ray runs on the hosts: no pyxis container here
    # A checkout goes as the working_dir; an installed podrun is in the hosts' Python (slurm.python).
    code = {"working_dir": workdir} if slurm.workdir or checkout_root() else {}
    # the profile's env: exported by the script, inherited by the Ray nodes
    env = {**code, **{k: v for k, v in runtime_env(plan, {}).items() if k not in ("working_dir", "py_modules")}}
    env["env_vars"].pop(PLAN_ENV)  # the driver reads the plan file instead
    plan_path = Path(plan.job.job_dir) / PLAN_FILE
    python = slurm.python
    return _environment().get_template("ray.sbatch.j2").render(
        **_header(plan), node_cpus=slurm.cpus_per_task or profile.cpus_per_node,
        ray_cpus=profile.cpus_per_node or 1, ray=profile.ray, plan_path=str(plan_path),
        config_heredoc="\n".join(config_heredoc(plan, plan_path, dump_plan(plan))),
        workdir=workdir, working_dir=code.get("working_dir"),
        python_dir=str(Path(python).parent) if "/" in python else "",
        ray_port=profile.ray.gcs_port, dashboard_port=profile.ray.dashboard_port, join_timeout_s=300,
        runtime_env=json.dumps(env),
    )


def _workdir(plan: LaunchPlan) -> str:
    container = plan.profile.container
    if container and container.image and container.workdir:
        return container.workdir
    return plan.profile.slurm.workdir or str(run_dir())


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self) -> None:
        self._tunnels: dict[str, Tunnel] = {}
        self._started: dict[str, float] = {}  # job id -> the first StartTime seen running
        self._ended: dict[str, float] = {}  # job id -> its EndTime once it ended
        self._versions: dict[int, str] = {}  # tunnel -> its Slurm's version, asked once (for error messages)

    def tunnel(self, login: LoginConfig | None) -> Tunnel:
        """One tunnel (one SSH connection) per login host, reused within a command."""
        key = login.model_dump_json() if login else "local"
        if key not in self._tunnels:
            self._tunnels[key] = retrying(open_tunnel(login))  # a dropped SSH connection is retried
        return self._tunnels[key]

    def _record_tunnel(self, record: JobRecord) -> Tunnel:
        login = record.extra.get("login")
        return self.tunnel(LoginConfig(**login) if login else None)

    def render(self, plan: LaunchPlan) -> str:
        return render_ray_sbatch(plan) if plan.backend == "ray" else render_sbatch(plan)

    def schedule(self, plan: LaunchPlan, record: JobRecord) -> None:
        job, login = plan.job, plan.profile.slurm.login
        tunnel = self.tunnel(login)
        script_path = str(Path(job.job_dir) / "job.sbatch")
        tunnel.write_text(script_path, self.render(plan), mode=0o700)
        tunnel.run(["mkdir", "-p", str(Path(job.job_dir) / "logs")])
        # sbatch passes its environment to the job: the script's ${VAR} and secrets come from here
        sbatch = ["sbatch", "--parsable", f"--comment={submission_mark(job.job_id)}", script_path]
        result = submit_once(tunnel, sbatch, job.name, job.job_id,  # never twice, even if the reply is lost
                             env=submission_environment(plan))
        if result.returncode == 127:
            raise BackendError("sbatch not found: install the Slurm client here, or set the profile's slurm.login "
                               "to submit through a login node")
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip()).splitlines()
            reason = message[-1] if message else f"exit {result.returncode}"
            raise BackendError(f"sbatch refused the job: {reason}")
        try:
            record.native_id = parse_sbatch_id(result.stdout)
        except SlurmOutputError as exc:
            raise exc.on(self._version(tunnel)) from None
        record.state, record.detail = PENDING, "submitted"
        record.extra.update(cluster_job_dir=job.job_dir, array=bool(plan.profile.slurm.array))
        if login:
            record.extra["login"] = login.model_dump()

    # ------------------------------------------------------------------ status

    def status(self, record: JobRecord) -> JobRecord:
        record = self._status(record)
        return self._registering(record) if is_terminal(record.state) else record

    def _registering(self, record: JobRecord) -> JobRecord:
        """A copy whose detail says so while the run's model and run page still wait (never saved)."""
        meta = str(Path(record.extra.get("cluster_job_dir", record.job_dir)) / "mlflow-spool" / SPOOL_META)
        text = self._record_tunnel(record).read_text(meta)
        busy = None if record.extra.get("login") or not registering(text) else Spool(Path(meta).parent).busy()
        return dataclasses.replace(record, detail=with_registering_note(record.detail, text, record.job_id, busy))

    def _status(self, record: JobRecord) -> JobRecord:
        if is_terminal(record.state):
            return record  # terminal states are cached
        tunnel = self._record_tunnel(record)
        state, detail, exit_code = self._query(tunnel, record.native_id)
        if state is None:  # slurmctld did not answer (restarting?): the job itself runs on
            record.detail = f"slurmctld unreachable ({detail}); last known: {record.state}"
            return record
        detail += self._preflight_note(tunnel, record) + self._straggler_note(tunnel, record)
        record.state, record.detail = state, detail
        if exit_code is not None:
            record.exit_code = exit_code
        if "started_at" not in record.extra and record.native_id in self._started:
            record.extra["started_at"] = self._started[record.native_id]  # the phases' end of queued
            record.save()
        if is_terminal(state):
            record.finished_at = time.time()
            if record.native_id in self._ended:  # the allocation's end (EndTime): where device_release_s ends
                stamp = None if record.extra.get("array") else tunnel.read_text(str(
                    Path(record.extra.get("cluster_job_dir", record.job_dir)) / RANKS_ENDED_FILE))
                record.extra["ended_at"] = allocation_end(self._ended[record.native_id], stamp)
            if exit_code in exit_codes.DESCRIPTIONS:
                record.detail = f"{detail}; {exit_codes.DESCRIPTIONS[exit_code]}"
            record.save()
        return record

    def _preflight_note(self, tunnel: Tunnel, record: JobRecord) -> str:
        """What preflight did to the job (excluded nodes, or why it stopped), from the job's folder."""
        from orchestrator.preflight.policy import STATUS_FILE, status_note

        folder = Path(record.extra.get("cluster_job_dir", record.job_dir)) / "preflight"
        return status_note(tunnel.read_text(str(folder / STATUS_FILE)))

    def _straggler_note(self, tunnel: Tunnel, record: JobRecord) -> str:
        """The ranks the straggler check named, from the job's folder (jobs.rank.stragglers)."""
        folder = Path(record.extra.get("cluster_job_dir", record.job_dir))
        return straggler_note(tunnel.read_text(str(folder / STRAGGLERS_FILE)))

    def _query(self, tunnel: Tunnel, job_id: str) -> tuple[str | None, str, int | None]:
        """(state, detail, exit code); state None when slurmctld does not answer.

        Raises:
            SlurmOutputError: Slurm printed something podrun cannot read (the message names the release).
        """
        queue = tunnel.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
        if queue.returncode == 127:
            raise BackendError("squeue not found: install the Slurm client, or use a profile with slurm.login")
        if queue.returncode != 0 and CONTROLLER_DOWN.search(queue.stderr):
            return None, queue.stderr.strip().splitlines()[-1][:200], None
        try:
            return self._read_status(tunnel, job_id, queue.stdout if queue.returncode == 0 else "")
        except SlurmOutputError as exc:
            raise exc.on(self._version(tunnel)) from None

    def _read_status(self, tunnel: Tunnel, job_id: str, queued: str) -> tuple[str, str, int | None]:
        in_queue = summarize(parse_squeue_jobs(queued))
        show = tunnel.run(["scontrol", "show", "job", "-o", job_id])
        shown = summarize(parse_scontrol_jobs(show.stdout)) if show.returncode == 0 else None
        if in_queue and not shown:
            return in_queue.state, in_queue.describe(), None
        if shown:
            if shown.state != PENDING and shown.start_time and shown.restarts == 0:
                self._started.setdefault(job_id, shown.start_time)
            ended = END_TIME.search(show.stdout)
            if is_terminal(shown.state) and ended and slurm_time(ended.group(1)):
                self._ended[job_id] = slurm_time(ended.group(1))
            detail = f"{shown.describe()}, restarts {shown.restarts}, nodes {shown.nodes or '?'}"
            return shown.state, detail, shown.exit_code if shown.state != RUNNING else None
        return self._query_sacct(tunnel, job_id)

    def _query_sacct(self, tunnel: Tunnel, job_id: str) -> tuple[str, str, int | None]:
        acct = tunnel.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
        found = summarize(parse_sacct_jobs(acct.stdout)) if acct.returncode == 0 else None
        if not found:
            return UNKNOWN, "not in squeue or scontrol, and sacct has no record (accounting off?)", None
        return found.state, found.describe(), found.exit_code

    def _version(self, tunnel: Tunnel) -> str:
        """The cluster's Slurm version (``scontrol --version``), asked once per login host."""
        if id(tunnel) not in self._versions:
            self._versions[id(tunnel)] = ask_version(tunnel.run)
        return self._versions[id(tunnel)]

    # ------------------------------------------------------------------ logs and cancel

    def log_path(self, record: JobRecord) -> str:
        pattern = f"{record.native_id}_*" if record.extra.get("array") else record.native_id
        return str(Path(record.extra.get("cluster_job_dir", record.job_dir)) / "logs" / f"slurm-{pattern}.out")

    def logs(self, record: JobRecord, rank: int = 0, follow: bool = False) -> Iterator[str]:
        tunnel, path, offset, pending = self._record_tunnel(record), self.log_path(record), 0, ""
        while True:
            ended = not follow or is_terminal(self.status(record).state)
            chunk = tunnel.read_text(path, offset) or ""
            offset += len(chunk.encode())
            lines = (pending + chunk).split("\n")
            pending = lines.pop()
            yield from lines
            if ended:
                if pending:
                    yield pending
                return
            time.sleep(1.0)

    def stop(self, record: JobRecord) -> None:
        # SIGTERM reaches every rank first: each checkpoints before Slurm's KillWait ends.
        result = self._record_tunnel(record).run(["scancel", record.native_id])
        if result.returncode != 0:
            raise BackendError(f"scancel {record.native_id} failed: {result.stderr.strip()}")
