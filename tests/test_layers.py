"""The launcher stays light and the ranks import only what their job uses (fresh processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

HEAVY = ("torch", "mlflow", "ray", "nvidia.dali", "horovod")
PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def heavy_modules_after(body: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``body`` in a fresh interpreter; return which heavy packages it imported."""
    code = PROBE.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLI = """
from orchestrator.cli import main

try:
    main({argv!r})
except SystemExit:
    pass
"""


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["render", "resnet50:tiny"],
    ["render", "recipes/jobs/resnet50-superpod.yaml", "--backend", "ray", "--on", "slurm"],
    ["render", "transformer:tiny", "--set", "cluster=ray", "--backend", "ray"],
    ["runs"],
])
def test_cli_answers_without_torch_mlflow_or_ray(argv, podrun_home):
    import os

    assert heavy_modules_after(CLI.format(argv=argv), dict(os.environ)) == []


def test_status_of_a_finished_job_imports_nothing_heavy(podrun_home):
    import os

    from orchestrator.spec.jobstore import JobRecord

    record = JobRecord(job_id="done-1", name="x", backend="local", recipe="resnet50", cluster="local",
                       job_dir=str(podrun_home / "jobs" / "done-1"), checkpoint_dir=str(podrun_home / "c"),
                       tracking_uri="sqlite:///x.db", world_size=1, state="SUCCEEDED")
    record.save()
    body = CLI.format(argv=["status", "done-1"])
    assert heavy_modules_after(body, dict(os.environ)) == []


def test_the_training_loop_imports_neither_ray_dali_nor_mlflow():
    body = ("import jobs.run, jobs.train, jobs.tasks.image_classification, jobs.tasks.translation, jobs.data.images, "
            "jobs.data.image_loader, jobs.data.pillow, jobs.tracking.run_tracking")
    assert heavy_modules_after(body) == ["torch"]


def test_the_rank_contract_imports_nothing_heavy():
    body = ("import jobs.contract.job, jobs.contract.recipe, jobs.contract.exit_codes, jobs.contract.progress, "
            "jobs.contract.checkpoint_index, jobs.contract.config_io, jobs.contract.placement, jobs.tracking.spool, "
            "jobs.tracking.tracker, jobs.tasks.image_classification, jobs.tasks.translation")
    assert heavy_modules_after(body) == []


def test_no_module_imports_another_in_a_circle():
    """Every import, at the top or inside a function, goes one way (Tarjan's strongly connected components)."""
    import grimp

    graph = grimp.build_graph("jobs", "orchestrator", include_external_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(members) > 1:
                circles.append(sorted(members))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("old", ["jobs.horovod_rendezvous", "jobs.sender", "jobs.system_metrics",
                                 "orchestrator.preflight_gate", "orchestrator.predict_mlperf"])
def test_the_python_m_names_of_earlier_releases_still_start(old):
    proc = subprocess.run([sys.executable, "-m", old, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-1000:]  # its help, or its table
