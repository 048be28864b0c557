"""MLPerf logs written through jobs.rank.mlperf_log pass (or fail) the real compliance checker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.contract.job import Derivation
from jobs.contract.recipe import Recipe
from jobs.rank.mlperf_log import (
    MlperfLogger,
    closed_division_problems,
    log_resnet_hparams,
    log_submission,
    run_compliance_checker,
)

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

STEPS_PER_EPOCH = 40


def make_recipe(optimizer: str, division: str = "closed") -> tuple[Recipe, Derivation]:
    """A closed-compliant ResNet recipe and its derivation for ``optimizer``."""
    recipe = Recipe.model_validate({
        "name": "resnet50",
        "optim": {"name": optimizer, "weight_decay": 5e-05, "end_lr": 0.0001},
        "schedule": {"decay": "poly", "poly_power": 2.0},
        "train": {"epochs": 4, "seed": 7},
        "mlperf": {"division": division},
    })
    lr = 0.256 * 4 if optimizer == "sgd" else 10.5
    derived = Derivation(
        world_size=4, batch_size=256, global_batch_size=1024, optimizer=optimizer,
        lr=lr, warmup_epochs=2.0,
    )  # fmt: skip
    return recipe, derived


def write_run(
    path: Path,
    optimizer: str = "sgd",
    division: str = "closed",
    accuracies: tuple[float, ...] = (0.41, 0.62, 0.74, 0.80),
    *,
    stop: bool = True,
) -> None:
    """Write the sequence the training loop emits: init, hparams, epochs, run_stop."""
    recipe, derived = make_recipe(optimizer, division)
    with MlperfLogger(path) as log:
        log.start("init_start")
        log.event("cache_clear", True)
        log_submission(log, recipe.mlperf, platform="2xCPU")
        log_resnet_hparams(
            log, recipe, derived, train_samples=40960, eval_samples=5000,
            steps_per_epoch=STEPS_PER_EPOCH,
        )  # fmt: skip
        log.end("init_stop")
        log.start("run_start")
        write_epochs(log, accuracies)
        if stop:
            log.end("run_stop", metadata={"status": "success"})


def write_epochs(log: MlperfLogger, accuracies: tuple[float, ...]) -> None:
    for epoch, accuracy in enumerate(accuracies, start=1):
        log.start("block_start", metadata={"first_epoch_num": epoch, "epoch_count": 1})
        log.start("epoch_start", metadata={"epoch_num": epoch})
        log.end("epoch_stop", metadata={"epoch_num": epoch})
        log.start("eval_start", metadata={"epoch_num": epoch})
        log.event("eval_accuracy", accuracy, metadata={"epoch_num": epoch})
        log.end("eval_stop", metadata={"epoch_num": epoch})
        log.end("block_stop", metadata={"first_epoch_num": epoch})


def events(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith(":::MLLOG")]


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_closed_run_passes_checker(tmp_path: Path, optimizer: str) -> None:
    log_path = tmp_path / "mlperf.log"
    write_run(log_path, optimizer)
    passed, output = run_compliance_checker(log_path)
    assert passed, output
    keys = {e["key"]: e for e in events(log_path)}
    assert keys["opt_name"]["value"] == optimizer
    assert keys[f"{optimizer}_opt_end_learning_rate"]["value"] == 0.0001
    assert keys["model_bn_span"]["value"] == 256
    # 4 epochs x 40 steps, minus 2 warmup epochs
    assert keys[f"{optimizer}_opt_learning_rate_decay_steps"]["value"] == 80
    # the call site is the caller of MlperfLogger, not jobs/rank/mlperf_log.py's event()
    assert keys["run_start"]["metadata"]["file"].endswith("test_mlperf_log.py")


def test_open_division_accepts_lower_accuracy(tmp_path: Path) -> None:
    log_path = tmp_path / "open.log"
    write_run(log_path, "sgd", "open", accuracies=(0.30, 0.52))
    passed, output = run_compliance_checker(log_path)
    assert passed, output


def test_closed_rejects_accuracy_below_target(tmp_path: Path) -> None:
    log_path = tmp_path / "low.log"
    write_run(log_path, "sgd", "closed", accuracies=(0.30, 0.52))
    passed, output = run_compliance_checker(log_path)
    assert not passed
    assert "eval_accuracy" in output


def test_missing_run_stop_fails(tmp_path: Path) -> None:
    log_path = tmp_path / "nostop.log"
    write_run(log_path, stop=False)
    passed, output = run_compliance_checker(log_path)
    assert not passed
    assert "run_stop" in output


def test_bad_end_lr_fails(tmp_path: Path) -> None:
    log_path = tmp_path / "badlr.log"
    recipe, derived = make_recipe("sgd")
    recipe.optim.end_lr = 0.001
    assert any("end_lr" in p for p in closed_division_problems(recipe, derived))
    with MlperfLogger(log_path) as log:
        log.start("init_start")
        log.event("cache_clear", True)
        log_submission(log, recipe.mlperf, platform="2xCPU")
        log_resnet_hparams(
            log, recipe, derived, train_samples=1, eval_samples=1, steps_per_epoch=1
        )
        log.end("init_stop")
        log.start("run_start")
        write_epochs(log, (0.8,))
        log.end("run_stop", metadata={"status": "success"})
    passed, output = run_compliance_checker(log_path)
    assert not passed
    assert "sgd_opt_end_learning_rate" in output


def test_two_loggers_write_their_own_files(tmp_path: Path) -> None:
    first, second = MlperfLogger(tmp_path / "a.log"), MlperfLogger(tmp_path / "b.log")
    first.event("seed", 1)
    second.event("seed", 2)
    first.close()
    second.close()
    assert [e["value"] for e in events(tmp_path / "a.log")] == [1]
    assert [e["value"] for e in events(tmp_path / "b.log")] == [2]


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    log = MlperfLogger(tmp_path / "rank1.log", enabled=False)
    log.event("seed", 1)
    log.start("run_start")
    log.close()
    assert not (tmp_path / "rank1.log").exists()


def test_closed_division_problems_flags_off_rule_values() -> None:
    recipe = Recipe(name="resnet50", schedule={"decay": "cosine"}, optim={"weight_decay": 2**-15})
    derived = Derivation(
        world_size=1, batch_size=256, global_batch_size=256, optimizer="sgd", lr=0.256,
        warmup_epochs=2,
    )  # fmt: skip
    problems = closed_division_problems(recipe, derived)
    assert any("decay" in p for p in problems)
    assert any("weight_decay" in p for p in problems)
    good, good_derived = make_recipe("sgd")
    assert closed_division_problems(good, good_derived) == []
    assert closed_division_problems(Recipe(name="resnet50"), derived) == []  # the defaults are closed-compliant
