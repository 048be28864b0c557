"""bench/step.py on its smallest row: podrun's loop and the bare loop timed, stopped, resumed in the same process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_step_benchmark_times_both_loops_and_resumes_without_waiting_for_a_sender(tmp_path):
    command = [sys.executable, "bench/step.py", "--models", "resnet-tiny", "--ranks", "1", "--precisions", "fp32",
               "--formats", "channels_last", "--compile", "off", "--repeats", "1", "--window", "2", "--warmup", "1",
               "--stop-check-every", "1", "--json", str(tmp_path / "step.json")]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"TMPDIR": str(tmp_path)})  # its runs and logs go under tmp_path
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = re.search(r"\| resnet-tiny \| 1 \| fp32 \| channels_last \| off \| ([\d,.]+) img/s \| ([\d,.]+) img/s \|"
                    r".*CPU time: .*; resume ok: step (\d+) -> (\d+) \|", proc.stdout)
    assert row, proc.stdout[-2000:]
    assert int(row.group(4)) > int(row.group(3))
    logs = list(Path(re.search(r"runs and logs under (\S+)", proc.stdout).group(1)).glob("jobs/*/bench.log"))
    assert logs and "still sending" not in logs[0].read_text()  # the resumed attempt did not wait for a sender
