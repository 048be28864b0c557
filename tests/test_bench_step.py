"""bench/step.py on its smallest row: podrun's loop and the bare loop timed, stopped, resumed in the same process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def smallest_row(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """bench/step.py on its smallest row (one window pair of 2 steps), which must end with exit 0."""
    command = [sys.executable, "bench/step.py", "--models", "resnet-tiny", "--ranks", "1", "--precisions", "fp32",
               "--formats", "channels_last", "--compile", "off", "--repeats", "1", "--window", "2", "--warmup", "1",
               "--stop-check-every", "1", *extra]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"TMPDIR": str(tmp_path)})  # its runs and logs go under tmp_path
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_the_step_benchmark_times_both_loops_and_resumes_without_waiting_for_a_sender(tmp_path):
    proc = smallest_row(tmp_path, "--json", str(tmp_path / "step.json"))
    row = re.search(r"\| resnet-tiny \| 1 \| fp32 \| channels_last \| off \| ([\d,.]+) img/s \| ([\d,.]+) img/s \|"
                    r".*CPU time: .*; resume ok: step (\d+) -> (\d+) \|", proc.stdout)
    assert row, proc.stdout[-2000:]
    assert int(row.group(4)) > int(row.group(3))
    logs = list(Path(re.search(r"runs and logs under (\S+)", proc.stdout).group(1)).glob("jobs/*/bench.log"))
    assert logs and "still sending" not in logs[0].read_text()  # the resumed attempt did not wait for a sender


@pytest.mark.fast
@pytest.mark.parametrize("option", ["--tracking", "--compile"])
def test_an_on_off_option_with_another_value_is_refused_in_one_line(option):
    proc = subprocess.run([sys.executable, "bench/step.py", option, "yes"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"step.py: error: {option} takes on, off or on,off, not 'yes'"


@pytest.mark.slow
def test_a_row_with_tracking_off_runs_podruns_loop_without_a_sender(tmp_path):
    proc = smallest_row(tmp_path, "--tracking", "off")
    assert re.search(r"\| resnet-tiny \| 1 \| .* MLflow off \(no sender, no monitor\); .*resume ok", proc.stdout)
    job_dir, = Path(re.search(r"runs and logs under (\S+)", proc.stdout).group(1)).glob("jobs/*/")
    assert "[bench] --no-tracking" in (job_dir / "bench.log").read_text()
    assert not (job_dir / "mlflow-spool").exists()  # no tracker ever spooled a record for a sender


@pytest.mark.slow
def test_a_row_past_its_timeout_is_reported_and_its_ranks_are_gone(tmp_path):
    """A row's torchrun and its ranks (each in a session of its own) are all killed; the grid goes on."""
    import psutil

    # Rows of minutes each (800 ResNet-50 steps), stopped after 4 s.
    command = [sys.executable, "bench/step.py", "--models", "resnet50-32px", "--ranks", "2,1", "--precisions", "fp32",
               "--formats", "channels_last", "--compile", "off", "--repeats", "20", "--window", "20",
               "--row-timeout", "4"]
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                              env=os.environ | {"TMPDIR": str(tmp_path)})
    except subprocess.TimeoutExpired:  # held by ranks that outlived their row: they are found below
        proc = None
    left = [p for p in psutil.process_iter(["cmdline"])
            if "step_worker.py" in " ".join(p.info["cmdline"] or []) and str(tmp_path) in " ".join(p.info["cmdline"])]
    for orphan in left:  # leave nothing running, whatever the verdict
        orphan.kill()
    assert not left, [p.info["cmdline"] for p in left]  # no rank of a timed-out row outlives it
    assert proc is not None, "bench/step.py did not end within 120 s"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = re.findall(r"^\| resnet50-32px \| (\d) \| .* row (\d+) s; timed out after 4 s \(--row-timeout\); "
                      r"its log: (\S+) \|$", proc.stdout, re.M)
    assert [ranks for ranks, _, _ in rows] == ["2", "1"], proc.stdout[-2000:]
    assert all(int(seconds) < 30 for _, seconds, _ in rows), rows  # not held until the ranks end by themselves
