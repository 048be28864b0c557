"""The run page's records (datasets, model, description, charts) and `podrun export`, against a real sqlite store.

No training here: a model with fresh weights is written as the final checkpoint, then the
same records a finished run queues go through a real Tracker and sender.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from jobs.contract import exit_codes
from jobs.rank.checkpoint import save_checkpoint
from jobs.tracking.dataset_inputs import dataset_records
from jobs.tracking.model_registry import MODEL_TAG, model_record
from jobs.tracking.run_page import NOTE_TAG, RESULT_TAG, describe, run_page_record
from jobs.tracking.run_tracking import job_params
from jobs.tracking.tracker import Tracker
from orchestrator.cli import main
from orchestrator.export import ATOL, ONNX_TAG
from orchestrator.spec.resolve import load_job

EVALS = [(1, 0.41), (2, 0.87), (3, 0.93)]
pytestmark = pytest.mark.registry


def finished_run(tmp_path: Path, job, model: torch.nn.Module, inputs: dict[str, np.ndarray], **registry) -> str:
    """Send what rank 0 sends at the end of a run that reached its target; return the run id."""
    checkpoint = save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict()}, global_step=66)
    np.savez(tmp_path / "model-inputs.npz", **inputs)
    job.registry = job.registry.model_copy(update=registry)
    tracker = Tracker(job.tracking_uri, job.experiment, tmp_path / "spool", run_name=job.name)
    tracker.log_params(job_params(job))
    tracker.set_tags({"git_sha": "0123abcd", "attempts": "2", "job_id": job.job_id})
    for record in dataset_records(job):
        tracker.log_record(record)
    metric = job.recipe.task_class().metric
    for epoch, value in EVALS:
        tracker.log_metrics({f"eval_{metric}": value, "train_loss": 2.0 / epoch, "throughput_img_per_s": 900.0},
                            step=epoch)
    tracker.log_metrics({"time_to_train_s": 31.25, "reached_target": 1.0, "mean_throughput_img_per_s": 912.4,
                         "phase_data_s": 1.5, "time_lost_s": 4.0}, step=66)
    tracker.log_record(model_record(job, checkpoint, tmp_path / "model-inputs.npz", "reached top-1 0.930 >= 0.9"))
    tracker.log_record(run_page_record(job, exit_codes.SUCCESS))
    assert tracker.finish("FINISHED")
    return tracker.run_id


@pytest.fixture
def job(podrun_home, digits_root, monkeypatch, tmp_path):
    monkeypatch.setenv("PODRUN_DATA", str(digits_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    return load_job("resnet50:tiny", ["tasks_per_node=2", "train.epochs=3", "eval.target=0.9"]).job


def tiny_resnet(job) -> torch.nn.Module:
    from jobs.models.resnet import build_resnet

    return build_resnet(job.recipe.model)


def test_run_page_dataset_model_and_onnx(job, tmp_path, capsys):
    images = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    run_id = finished_run(tmp_path, job, tiny_resnet(job), {"images": images})
    client = MlflowClient(job.tracking_uri)
    run = client.get_run(run_id)

    note = run.data.tags[NOTE_TAG]
    assert note.startswith("**reached top-1 0.930 >= 0.9 at epoch 3** · time to train **31.2 s**")
    for text in ("| recipe | resnet50 (preset tiny) |", "| scale | 1 node x 2 CPU ranks = 2 ranks, ddp |",
                 "| 64 / 0.25", "912 img/s", "| phases | data 1.5 s |", "1 restart (2 attempts), time lost 4 s",
                 "registered as resnet50 version 1", "| git | 0123abcd |",
                 "podrun launch resnet50:tiny --set tasks_per_node=2 --set train.epochs=3 --set eval.target=0.9"):
        assert text in note, (text, note)
    assert run.data.tags[RESULT_TAG] == "reached top-1 0.930 >= 0.9 at epoch 3"

    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"digits-train", "digits-val"}
    assert '"files": 1437' in datasets["digits-train"].dataset.profile
    assert [t.value for t in datasets["digits-val"].tags] == ["val"]

    assert {a.path for a in client.list_artifacts(run_id, "charts")} == \
        {"charts/eval_top1.png", "charts/throughput.png", "charts/loss.png"}
    version = client.get_model_version("resnet50", "1")
    assert version.run_id == run_id and version.description == "reached top-1 0.930 >= 0.9"
    assert [m.model_id for m in run.outputs.model_outputs] == [run.data.tags["podrun.model_uri"][len("models:/"):]]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "eval_top1"
    # the model joined the run's experiment, its artifacts beside the store (not ./mlruns)
    logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert logged.experiment_id == run.info.experiment_id
    assert logged.artifact_location.startswith((tmp_path / "store" / "mlartifacts").as_uri())

    assert main(["export", run_id, "--format", "onnx", "--tracking-uri", job.tracking_uri,
                 "--output", str(tmp_path / "exports")]) == 0
    out = capsys.readouterr().out
    assert "resnet50.onnx: max |onnx - torch|" in out and "on 8 validation rows" in out
    assert "--fp16 --minShapes=images:1x3x32x32 --optShapes=images:32x3x32x32" in out
    assert [a.path for a in client.list_artifacts(run_id, "onnx")] == ["onnx/resnet50.onnx"]
    tag = client.get_run(run_id).data.tags[ONNX_TAG]
    assert "opset 18, dynamic batch" in tag and float(tag.split("max |onnx - torch| ")[1].split()[0]) <= ATOL
    import onnx

    graph = onnx.load(str(tmp_path / "exports" / run_id / "resnet50.onnx")).graph
    assert graph.input[0].name == "images" and graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_a_model_over_the_size_limit_is_skipped_with_a_reason(job, tmp_path, capsys):
    images = np.zeros((2, 3, 32, 32), dtype=np.float32)
    run_id = finished_run(tmp_path, job, tiny_resnet(job), {"images": images}, max_model_mb=0.01)
    run = MlflowClient(job.tracking_uri).get_run(run_id)
    reason = run.data.tags[MODEL_TAG]
    assert reason.startswith("not logged: its weights are ") and "registry.max_model_mb 0.01" in reason
    assert str(tmp_path / "ckpt") in reason and not run.outputs.model_outputs
    assert reason in run.data.tags[NOTE_TAG]
    assert main(["export", run_id, "--tracking-uri", job.tracking_uri]) == exit_codes.CONFIG_ERROR
    assert "has no logged model (not logged: its weights" in capsys.readouterr().err


def test_transformer_exports_its_encoder_and_one_decoder_step(podrun_home, translation_root, tmp_path, monkeypatch,
                                                              capsys):
    from jobs.data.parallel_text import PAD_ID
    from jobs.models.transformer import build_transformer

    monkeypatch.setenv("PODRUN_DATA", str(translation_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    job = load_job("transformer:tiny", ["eval.target=25"]).job
    model = build_transformer(job.recipe.model, vocab_size=320, pad_id=PAD_ID)
    rng = np.random.default_rng(0)
    src, tgt_in = rng.integers(4, 320, size=(4, 11)), rng.integers(4, 320, size=(4, 7))
    src[0, 8:] = PAD_ID  # a padded row: the exported masks must handle it
    run_id = finished_run(tmp_path, job, model, {"src": src, "tgt_in": tgt_in})
    assert main(["export", run_id, "--tracking-uri", job.tracking_uri, "--output", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "transformer-encoder.onnx" in out and "transformer-decoder_step.onnx" in out
    paths = {a.path for a in MlflowClient(job.tracking_uri).list_artifacts(run_id, "onnx")}
    assert paths == {"onnx/transformer-encoder.onnx", "onnx/transformer-decoder_step.onnx"}


def test_description_says_what_happened_when_the_target_was_missed():
    params = {"recipe": "transformer", "preset": "", "cluster": "superpod", "backend": "slurm", "nodes": "32",
              "tasks_per_node": "8", "device": "cuda", "world_size": "256", "comm": "horovod"}
    record = {"metric": "bleu", "label": "BLEU", "digits": 2, "unit": "tok", "target": 25.0,
              "code": exit_codes.NOT_REACHED, "command": ""}
    text = describe(params, {"epochs_run": 4.0}, {"slurm_restart_count": "1", "attempts": "2"},
                    [(1, 12.5), (4, 24.31)], record)
    assert text.startswith("**did not reach BLEU 25: best 24.31 in 4 epochs**\n")
    assert "32 nodes x 8 GPUs = 256 ranks, horovod" in text and "Slurm requeues 1" in text
    assert "Reproduce" not in text and "| time to train | - |" in text
    record["code"] = exit_codes.PREEMPTED
    assert describe(params, {}, {}, [(1, 12.5)], record).startswith(
        "**stopped on a signal (resume with --resume) after 1 epochs: best BLEU 12.50 (target 25)**")
