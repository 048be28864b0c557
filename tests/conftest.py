"""Shared fixtures: a digits data set built once, and an isolated podrun home per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Real services for the integration tests, each on test hosts with their own addresses
# (tests/fixtures/hosts.py): Slurm and Ray clusters, an sshd on a login host, MLflow servers.
pytest_plugins = ["tests.fixtures.slurm", "tests.fixtures.sshd", "tests.fixtures.ray_cluster",
                  "tests.fixtures.mlflow_server", "tests.faults"]


@pytest.fixture(autouse=True)
def registry_only_where_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Jobs that tests resolve log no model unless the test is marked ``registry``.

    Logging the model (``torch.export``, upload, registration: about 10 s after every run
    that reaches its target, on the 2-core box) is checked by the tests that look at it
    (tests/test_run_page*.py, the README's Ray line, the two-node Slurm run); the rest
    would only pay for it.
    """
    from jobs.contract.job import RegistryConfig

    if request.node.get_closest_marker("registry"):
        yield
        return
    field = RegistryConfig.model_fields["enabled"]
    field.default = False
    RegistryConfig.model_rebuild(force=True)
    try:
        yield
    finally:
        field.default = True
        RegistryConfig.model_rebuild(force=True)


@pytest.fixture(autouse=True)
def fast_tests_start_no_job(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked ``fast`` that submits a job (every backend submits through ``Backend.submit``) fails."""
    if not request.node.get_closest_marker("fast"):
        return
    from orchestrator.backends.base import Backend

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a test marked fast started a training job: mark it slow instead")

    monkeypatch.setattr(Backend, "submit", refuse)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding ``digits/`` (scikit-learn's digits as ImageNet-layout JPEGs)."""
    from orchestrator.datasets.images import write_digits

    root = tmp_path_factory.mktemp("data")
    write_digits(root / "digits")
    return root


@pytest.fixture(scope="session")
def translation_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding ``translation-toy/`` (two artificial languages) and its tokenizer."""
    from orchestrator.datasets.translation_toy import write_translation_toy

    root = tmp_path_factory.mktemp("text")
    write_translation_toy(root / "translation-toy")
    return root


@pytest.fixture
def podrun_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$PODRUN_HOME`` (job records, checkpoints, the sqlite MLflow store)."""
    home = tmp_path / "home"
    monkeypatch.setenv("PODRUN_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO)
    return home


@pytest.fixture
def local_env(podrun_home: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local profile pointed at the digits data and an isolated home."""
    monkeypatch.setenv("PODRUN_DATA", str(digits_root))
    return podrun_home


# What jobs.rank.dist.init_distributed writes into os.environ (a rank owns its process). A test that runs a
# rank in this process must not hand them on: sbatch exports the environment and `ray start` inherits it, and a
# GLOO_SOCKET_IFNAME=lo left by an in-process test made the next 2-host jobs of this worker bind loopback.
RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOROVOD_GLOO_IFACE")


@pytest.fixture(autouse=True)
def rank_env_restored() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in RANK_ENV}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# pytest-xdist (make test runs -n 2 --dist loadgroup): the tests that share a real cluster
# run in one worker, so each worker starts at most the clusters its tests need.
CLUSTER_GROUPS = {"slurm_cluster": "slurm", "ssh_server": "slurm", "ray_cluster": "ray"}
# What a test marked `fast` may not use (make test-fast: parsing, rendering, config, predict).
SLOW_FIXTURES = {"slurm_cluster", "ssh_server", "ray_cluster", "mlflow_server", "mlflow_host", "server", "local_env"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misfiled = [item.nodeid for item in items if item.get_closest_marker("fast")
                and (item.get_closest_marker("slow") or SLOW_FIXTURES & set(item.fixturenames))]
    if misfiled:
        raise pytest.UsageError(f"marked fast but uses a cluster, a server or a training job: {', '.join(misfiled)}")
    for item in items:
        group = next((CLUSTER_GROUPS[name] for name in item.fixturenames if name in CLUSTER_GROUPS), None)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
