"""Config loading: every kind of bad input gives one line naming the problem, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from jobs.contract.recipe import Recipe
from orchestrator.cli import main
from orchestrator.spec.profiles import ClusterProfile
from orchestrator.spec.resolve import load_job
from orchestrator.spec.scaling import derive

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def render_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run ``podrun render``; return stderr, asserting it is one error line and the config-error exit code."""
    assert main(["render", *argv]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("podrun: error: "), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    return write(tmp_path / "cluster.yaml", "profiles:\n  local: {scheduler: local, gpus_per_node: 0}\n"
                 "  big: {scheduler: slurm, nodes: 4, gpus_per_node: 8}\n")


def test_malformed_yaml_names_file_and_line(tmp_path, capsys, podrun_home):
    job = write(tmp_path / "job.yaml", "name: x\nrecipe: resnet50\nnodes: [1,\n")
    err = render_error(capsys, str(job))
    assert "job.yaml" in err and "malformed YAML" in err and "line" in err


def test_unknown_job_key_lists_valid_keys(tmp_path, capsys, podrun_home):
    job = write(tmp_path / "job.yaml", "name: x\nrecipe: resnet50\nnodez: 2\n")
    err = render_error(capsys, str(job))
    assert "unknown key 'nodez'" in err and "nodes" in err and "tasks_per_node" in err


def test_unknown_recipe_key_from_set_names_key_path(capsys, podrun_home):
    err = render_error(capsys, "resnet50:tiny", "--set", "train.bach_size=3")
    assert "unknown key 'train.bach_size'" in err and "batch_size" in err and "resnet50.yaml" in err


def test_unknown_profile_key(tmp_path, capsys, podrun_home):
    bad = write(tmp_path / "cluster.yaml", "profiles:\n  local: {scheduler: local, gpu_per_node: 2}\n")
    err = render_error(capsys, "resnet50:tiny", "--cluster-file", str(bad))
    assert "unknown key 'profiles.local.gpu_per_node'" in err and "gpus_per_node" in err


def test_wrong_type_names_path_and_expectation(capsys, podrun_home):
    err = render_error(capsys, "resnet50:tiny", "--set", "train.epochs=many")
    assert "train.epochs" in err and "integer" in err and "'many'" in err


def test_zero_nodes(capsys, podrun_home):
    err = render_error(capsys, "resnet50:tiny", "--set", "nodes=0")
    assert "nodes" in err and "greater than 0" in err


def test_batch_that_does_not_divide(capsys, podrun_home, cluster):
    err = render_error(capsys, "resnet50:tiny", "--cluster-file", str(cluster), "--set", "tasks_per_node=3",
                       "--set", "train.global_batch_size=64")
    assert "does not divide by 3 ranks" in err


def test_more_nodes_than_profile(capsys, podrun_home, cluster):
    err = render_error(capsys, "resnet50:tiny", "--cluster-file", str(cluster), "--set", "cluster=big",
                       "--set", "nodes=8", "--backend", "local")
    assert "asks for 8 nodes" in err and "has 4" in err


def test_more_tasks_than_gpus(capsys, podrun_home, cluster):
    err = render_error(capsys, "resnet50:tiny", "--cluster-file", str(cluster), "--set", "cluster=big",
                       "--set", "tasks_per_node=9", "--backend", "local")
    assert "9 tasks per node" in err and "8 GPUs" in err


def test_unknown_profile_preset_and_recipe(capsys, podrun_home, cluster):
    assert "no cluster profile 'mars'" in render_error(capsys, "resnet50:tiny", "--cluster-file", str(cluster),
                                                       "--set", "cluster=mars")
    assert "no preset 'huge'" in render_error(capsys, "resnet50:huge")
    assert "recipe 'resnet51' not found" in render_error(capsys, "resnet51")


def test_bad_set_syntax_and_missing_file(capsys, podrun_home, tmp_path):
    assert "expected KEY=VALUE" in render_error(capsys, "resnet50:tiny", "--set", "train.epochs")
    assert "file not found" in render_error(capsys, str(tmp_path / "nope.yaml"))


def test_impossible_value_in_recipe(capsys, podrun_home):
    err = render_error(capsys, "resnet50:tiny", "--set", "optim.momentum=1.5")
    assert "optim.momentum" in err and "less than 1" in err


def test_missing_dataset_at_launch(capsys, podrun_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PODRUN_DATA", str(tmp_path / "empty"))
    assert main(["launch", "recipes/jobs/resnet50-tiny.yaml"]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert "data set not found" in err and "podrun data digits" in err and len(err.splitlines()) == 1


def test_cli_error_is_one_line_in_a_real_process(tmp_path, podrun_home):
    job = write(tmp_path / "job.yaml", "name: x\nrecipe: resnet50\nnodez: 2\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "render", str(job)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == exit_codes.CONFIG_ERROR
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_presets_and_overrides_merge():
    job = load_job("resnet50:tiny", ["train.epochs=3", "tasks_per_node=2"])
    assert job.recipe.train.epochs == 3 and job.recipe.model.width == 16
    assert job.world_size == 2 and job.device == "cpu"
    assert job.derived.global_batch_size == 64


def test_env_expansion_in_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("PODRUN_TEST_ROOT", "/srv/x")
    cfg = write(tmp_path / "c.yaml", "profiles:\n  local: {data_root: '${PODRUN_TEST_ROOT}/d', "
                "checkpoint_root: '${NOT_SET_ANYWHERE:-/ck}'}\n")
    job = load_job("resnet50:tiny", cluster_file=str(cfg))
    assert job.data_dir == "/srv/x/d/digits" and job.checkpoint_dir.startswith("/ck/")


@pytest.mark.parametrize("ranks,expect_opt,expect_warmup", [(16, "sgd", 2.0), (96 * 16, "lars", 5.0)])
def test_scaling_rule(ranks, expect_opt, expect_warmup):
    recipe = Recipe(name="r")
    derived = derive(recipe, ranks)
    assert derived.global_batch_size == 256 * ranks
    assert derived.optimizer == expect_opt
    assert derived.lr == pytest.approx(round(0.256 * ranks, 3))
    assert derived.warmup_epochs == expect_warmup  # 2 epochs per 4096 images, capped at 5
    assert any("linear scaling" in note for note in derived.notes)


def test_pinned_values_win():
    recipe = Recipe(name="r", optim={"base_lr": 0.1, "name": "sgd"}, schedule={"warmup_epochs": 3})
    derived = derive(recipe, 1024)
    assert (derived.lr, derived.optimizer, derived.warmup_epochs) == (0.1, "sgd", 3)


def test_bundled_profiles_are_valid():
    from orchestrator.spec.resolve import load_profiles

    profiles = load_profiles(REPO / "cluster.yaml")
    assert {"local", "dgx2", "superpod"} <= set(profiles)
    assert profiles["dgx2"].gpus_per_node == 16 and len(profiles["dgx2"].interconnect.hcas) == 8
    assert isinstance(profiles["superpod"], ClusterProfile) and profiles["superpod"].nodes >= 96
