"""Where podrun finds its files: the search order, shadowing, `podrun init`, and `render` naming its files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from orchestrator.backends.ray_runtime import code_env
from orchestrator.cli import main
from orchestrator.spec import paths
from orchestrator.spec.resolve import load_job

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder outside the repository, and an empty user config folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PODRUN_HOME", str(tmp_path / "home"))
    for name in ("PODRUN_CLUSTER_FILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return work


def cluster_file(path: Path, profile: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"profiles": {profile: {"scheduler": "local", "gpus_per_node": 0}}}))
    return path


def test_cluster_file_search_order(elsewhere, tmp_path, monkeypatch):
    assert paths.find_cluster_file() == (REPO / "cluster.yaml", "bundled")
    user = cluster_file(tmp_path / "xdg" / "podrun" / "cluster.yaml", "user")
    assert paths.find_cluster_file() == (user, "user config")
    here = cluster_file(elsewhere / "cluster.yaml", "here")
    assert paths.find_cluster_file() == (Path("cluster.yaml"), "working folder")
    env = cluster_file(tmp_path / "env.yaml", "env")
    monkeypatch.setenv("PODRUN_CLUSTER_FILE", str(env))
    assert paths.find_cluster_file() == (env, "$PODRUN_CLUSTER_FILE")
    assert paths.find_cluster_file(str(here)) == (here, "--cluster-file")


def test_xdg_config_home_defaults_to_dot_config(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.config_dir() == tmp_path / ".config" / "podrun"


def test_a_users_cluster_file_replaces_the_bundled_one_whole(elsewhere, tmp_path, capsys):
    cluster_file(tmp_path / "xdg" / "podrun" / "cluster.yaml", "mine")
    assert main(["render", "resnet50:tiny"]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert "no cluster profile 'local'; profiles: mine" in err and "xdg/podrun/cluster.yaml" in err
    assert load_job("resnet50:tiny", ["cluster=mine"]).profile.name == "mine"


def test_missing_cluster_file_from_the_environment_is_one_line(elsewhere, monkeypatch, capsys):
    monkeypatch.setenv("PODRUN_CLUSTER_FILE", "/nonexistent/cluster.yaml")
    assert main(["render", "resnet50:tiny"]) == exit_codes.CONFIG_ERROR
    assert capsys.readouterr().err == "podrun: error: $PODRUN_CLUSTER_FILE /nonexistent/cluster.yaml: file not found\n"


def shadow_recipe(root: Path, description: str) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "resnet50.yaml").read_text())
    recipe["description"] = description
    path = root / "recipes" / "resnet50.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_users_recipe_shadows_the_bundled_one(elsewhere, tmp_path):
    assert load_job("resnet50:tiny").recipe.description.startswith("ResNet-50 v1.5")
    shadow_recipe(tmp_path / "xdg" / "podrun", "from the user config")
    plan = load_job("resnet50:tiny")
    assert plan.recipe.description == "from the user config" and "(user config)" in plan.sources["recipe"]
    shadow_recipe(elsewhere, "from the working folder")
    assert load_job("resnet50:tiny").recipe.description == "from the working folder"
    assert paths.known_recipes() == ["resnet50", "transformer"]


def test_unknown_recipe_lists_every_known_one(elsewhere, capsys):
    assert main(["render", "resnet5:tiny"]) == exit_codes.CONFIG_ERROR
    assert "recipe 'resnet5' not found; known recipes: resnet50, transformer" in capsys.readouterr().err


def test_bundled_job_specs_are_found_from_any_folder(elsewhere):
    for ref in ("recipes/jobs/resnet50-tiny.yaml", "resnet50-tiny.yaml"):
        found = paths.find_job_spec(ref)
        assert found == (REPO / "recipes" / "jobs" / "resnet50-tiny.yaml", "bundled")
    assert paths.find_job_spec("nope.yaml") is None and paths.find_job_spec("resnet50:tiny") is None


def test_render_names_the_files_it_read(elsewhere, capsys):
    assert main(["render", "recipes/jobs/resnet50-dgx2.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "#!/bin/bash"
    shown = paths.display(REPO)  # absolute, or under ~/
    assert lines[1:4] == [f"# podrun read: job spec {shown}/recipes/jobs/resnet50-dgx2.yaml (bundled)",
                          f"# podrun read: cluster file {shown}/cluster.yaml (bundled)",
                          f"# podrun read: recipe {shown}/recipes/resnet50.yaml (bundled)"]
    assert "#SBATCH --gpus-per-node=16" in lines


def test_init_copies_the_bundled_files_and_will_not_overwrite(elsewhere, capsys):
    assert main(["init"]) == 0
    assert (elsewhere / "cluster.yaml").read_text() == (REPO / "cluster.yaml").read_text()
    spec = REPO / "recipes" / "jobs" / "resnet50-tiny.yaml"
    assert (elsewhere / "resnet50-tiny.yaml").read_text() == spec.read_text()
    (elsewhere / "cluster.yaml").write_text("# mine\n")
    capsys.readouterr()
    assert main(["init"]) == exit_codes.CONFIG_ERROR
    assert "already there" in capsys.readouterr().err
    assert (elsewhere / "cluster.yaml").read_text() == "# mine\n"
    assert main(["init", "--force", "--job", "transformer-tiny", "sub"]) == 0
    assert {p.name for p in (elsewhere / "sub").iterdir()} == {"cluster.yaml", "transformer-tiny.yaml"}
    assert main(["init", "--job", "nope"]) == exit_codes.CONFIG_ERROR
    assert "bundled: resnet50-dgx2, resnet50-superpod, resnet50-tiny, transformer-tiny" in capsys.readouterr().err


def test_ray_gets_the_checkout_or_the_installed_packages(monkeypatch):
    assert code_env() == {"working_dir": str(REPO)}
    monkeypatch.setattr("orchestrator.backends.ray_runtime.checkout_root", lambda: None)
    modules = [Path(p) for p in code_env()["py_modules"]]
    assert [p.name for p in modules] == ["jobs", "orchestrator"]
    assert all((p / "__init__.py").is_file() for p in modules)
