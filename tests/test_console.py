"""What a person reads after `podrun launch`: podrun's lines only, and commands that paste as they are.

MLflow's and SQLAlchemy's own output goes to the job's ``logs/tracking.log`` (the sender and
system-metrics processes divert it at the source); the last lines are comments, one command
and one URL a line, never wrapped, whatever the output is (a pipe, a file, a terminal).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs.contract.checkpoint_index import update_run_info
from orchestrator.console import summary_lines
from orchestrator.spec.jobstore import list_records

# A line MLflow, SQLAlchemy or alembic wrote: their log format, or their prints.
LIBRARY_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ |\b(mlflow|sqlalchemy|alembic)\.[a-z_.]+: |"
                          r"Successfully registered model|Created version '|Registered model '", re.IGNORECASE)
DEMO = ["resnet50:tiny", "--set", "train.epochs=1", "--set", "eval.target=0.01"]


def job_record(tmp_path: Path, tracking_uri: str, state: str = "SUCCEEDED"):
    from orchestrator.spec.jobstore import JobRecord

    return JobRecord(job_id="tiny-1", name="tiny", backend="local", recipe="resnet50", cluster="local",
                     job_dir=str(tmp_path / "job"), checkpoint_dir=str(tmp_path / "ckpt"), tracking_uri=tracking_uri,
                     world_size=1, state=state, detail="reached target")


def check_pasteable(lines: list[str]) -> tuple[list[list[str]], list[str]]:
    """Each line after the status line is a comment, a URL or one shell command; returns (commands, URLs)."""
    commands, urls = [], []
    for line in lines[1:]:
        assert line == line.strip() and line, f"stray space or empty line: {line!r}"
        if line.startswith("#"):
            continue
        if line.startswith(("http://", "https://")):
            assert " " not in line, line
            urls.append(line)
            continue
        commands.append(shlex.split(line))  # raises on an unclosed quote (a wrapped command)
    return commands, urls


def store_of(command: list[str]) -> str:
    assert command[1] == "ui" and command.count("--backend-store-uri") == 1, command
    return command[command.index("--backend-store-uri") + 1]


@pytest.mark.fast
def test_the_ui_command_is_one_quoted_line_and_the_page_another(tmp_path):
    uri = f"sqlite:///{tmp_path}/a store with spaces/mlflow.db"
    record = job_record(tmp_path, uri)
    update_run_info(Path(record.checkpoint_dir), mlflow_run_id="abc123", mlflow_experiment_id="7")
    lines = summary_lines(record)
    assert lines[0] == "tiny-1: SUCCEEDED (reached target)"
    (command,), (url,) = check_pasteable(lines)
    assert store_of(command) == uri
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"
    assert f"# MLflow's own log lines: {tmp_path}/job/logs/tracking.log" in lines


@pytest.mark.fast
def test_a_server_run_is_a_url_and_a_kept_spool_a_sync_command(tmp_path):
    record = job_record(tmp_path, "http://user:secret@mlflow.example:5000/")
    update_run_info(Path(record.checkpoint_dir), mlflow_run_id="abc123")
    lines = summary_lines(record)
    assert check_pasteable(lines) == ([], ["http://user:***@mlflow.example:5000/#/runs/abc123"])

    record = job_record(tmp_path / "offline", "http://mlflow.example:5000", state="CANCELLED")
    (Path(record.job_dir) / "mlflow-spool").mkdir(parents=True)
    (Path(record.job_dir) / "mlflow-spool" / "meta.json").write_text(json.dumps({"done": False}))
    commands, urls = check_pasteable(summary_lines(record))
    assert commands == [["podrun", "sync", "tiny-1"]] and urls == []


DIVERTED = """
import logging, os, sys
from pathlib import Path
from jobs.tracking.system_metrics import divert_library_output

divert_library_output(Path(sys.argv[1]))
logging.getLogger("jobs.tracking.tracker").warning("tracking: MLflow at X unavailable")
logging.getLogger("mlflow.store.db.utils").warning("Creating initial MLflow database tables...")
logging.getLogger("sqlalchemy.engine.Engine").warning("a SQLAlchemy line")
print("Successfully registered model 'resnet50'.", file=sys.stderr)
print("a print to stdout")
os.write(2, b"a C library's line\\n")
"""


@pytest.mark.fast
def test_library_lines_and_prints_go_to_the_file_and_podruns_to_the_rank_log(tmp_path):
    log = tmp_path / "logs" / "tracking.log"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DIVERTED), str(log)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "tracking: MLflow at X unavailable\n"
    diverted = log.read_text()
    for line in ("WARNING mlflow.store.db.utils: Creating initial MLflow database tables...",
                 "WARNING sqlalchemy.engine.Engine: a SQLAlchemy line", "Successfully registered model 'resnet50'.",
                 "a print to stdout", "a C library's line"):
        assert line in diverted
    assert "unavailable" not in diverted
    assert log.stat().st_mode & 0o077 == 0


@pytest.mark.slow
@pytest.mark.registry  # the model is registered: MLflow's "Successfully registered model" must be diverted too
def test_the_demo_through_tee_ends_in_lines_that_paste(local_env, tmp_path):
    from mlflow.cli import cli

    out = tmp_path / "launch.txt"
    launch = shlex.join([sys.executable, "-m", "orchestrator", "launch", *DEMO])
    done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{launch} 2>&1 | tee {shlex.quote(str(out))}"],
                          stdout=subprocess.DEVNULL, timeout=600)
    text = out.read_text()
    assert done.returncode == 0, text
    (record,) = list_records(local_env)
    lines = text.splitlines()
    tail = lines[max(i for i, line in enumerate(lines) if line.startswith(f"{record.job_id}: SUCCEEDED")):]
    (command,), (url,) = check_pasteable(tail)
    assert shutil.which(command[0]), command  # `mlflow` on PATH, or this environment's own by its full path
    # mlflow ui's own parser takes it (`ui` is an alias of `server`); nothing is started
    options = cli.get_command(None, "ui").make_context("ui", command[2:]).params
    assert options["backend_store_uri"] == store_of(command) == record.tracking_uri
    run = json.loads((Path(record.checkpoint_dir) / "run.json").read_text())
    assert url == f"http://127.0.0.1:5000/#/experiments/{run['mlflow_experiment_id']}/runs/{run['mlflow_run_id']}"

    leaked = [line for line in lines if LIBRARY_LINE.search(line)]
    assert not leaked, leaked
    tracking_log = Path(record.job_dir) / "logs" / "tracking.log"
    assert f"# MLflow's own log lines: {tracking_log}" in tail
    diverted = tracking_log.read_text()
    assert "Successfully registered model 'resnet50'" in diverted and "INFO mlflow.system_metrics" in diverted
    assert "[mlflow] run ended" in text  # podrun's own MLflow lines stay
    assert "the run's last records reached MLflow" in text
