"""The training step's modes: precision, compile, resume, recompiles, and the loop's collectives.

Each test runs the real per-rank entrypoint (:func:`jobs.run.run_rank`, in this process,
1 rank) or the local backend (2 ranks) on the ``resnet50:tiny`` preset with synthetic
data, a few steps per epoch. A stop is requested with a real SIGUSR2 sent by the data
loader at a chosen step, as Slurm's ``--signal`` would send it. Resumed runs are compared
bit for bit where the mode is deterministic on CPU: fp32, amp-bf16 and amp-fp16 eager, and
compiled runs resumed into compiled runs (the same generated kernels run again).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from jobs.contract import exit_codes
from jobs.contract.job import ResolvedJob
from jobs.contract.placement import free_port
from jobs.rank.checkpoint import latest_checkpoint, load_checkpoint
from orchestrator.cli import main
from orchestrator.spec.resolve import load_job

BATCH = 16
STEPS = 6  # optimizer steps per epoch
TINY = ["data.backend=synthetic", f"data.synthetic_samples={BATCH * STEPS}", f"train.batch_size={BATCH}",
        "train.epochs=2", "eval.target=1.0", "eval.start_epoch=99", "train.log_every=4"]
STOP_AFTER = 12  # transformer steps before the stop
MAX_RECOMPILES = 0  # the transformer is compiled for dynamic shapes from the start


@pytest.fixture
def one_rank(podrun_home, monkeypatch):
    """A single-rank environment for in-process runs; restores the signal handlers the loop installs."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    yield podrun_home
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def tiny_job(*settings: str, ref: str = "resnet50:tiny", base: list[str] = TINY,
             folder: str | None = None) -> ResolvedJob:
    """The resolved job of ``ref`` with ``base`` then ``settings``, 1 rank, optionally in its own folders."""
    job = load_job(ref, ["tasks_per_node=1", *base, *settings]).job
    if folder:
        job = job.model_copy(update={"checkpoint_dir": str(Path(job.checkpoint_dir).parent / folder),
                                     "job_dir": str(Path(job.job_dir).parent / folder)})
    return job


def signal_at(monkeypatch, loader_class, epoch: int, step: int) -> None:
    """Make the training loader send this process SIGUSR2 as it hands out batch ``step`` of ``epoch``."""
    original = loader_class.epoch

    def epoch_with_signal(self, current, skip=0):
        for index, batch in enumerate(original(self, current, skip), start=skip):
            if getattr(self, "train", True) and (current, index) == (epoch, step):
                os.kill(os.getpid(), signal.SIGUSR2)
            yield batch

    monkeypatch.setattr(loader_class, "epoch", epoch_with_signal)


def run(job: ResolvedJob, monkeypatch) -> int:
    from jobs.run import run_rank

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    return run_rank(job)


def final(job: ResolvedJob) -> dict:
    return load_checkpoint(latest_checkpoint(Path(job.checkpoint_dir)))


def assert_same_weights(expected: dict, got: dict) -> None:
    assert got["progress"]["global_step"] == expected["progress"]["global_step"]
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name


def recompiles() -> list[str]:
    from torch._dynamo.utils import get_compilation_metrics

    return [m.recompile_reason for m in get_compilation_metrics() if m.recompile_reason]


def fresh_compile_state() -> None:
    import torch._dynamo
    from torch._dynamo.utils import clear_compilation_metrics

    torch._dynamo.reset()
    clear_compilation_metrics()


@pytest.mark.slow
def test_compiled_checkpoint_resumes_into_compiled_and_eager_runs(one_rank, monkeypatch):
    from jobs.data.images import SyntheticLoader

    fresh_compile_state()
    reference = tiny_job("train.compile=true", "eval.start_epoch=1", folder="reference")
    assert run(reference, monkeypatch) in (exit_codes.SUCCESS, exit_codes.NOT_REACHED)
    assert recompiles() == []  # 12 steps and an evaluation: compiled once, never again

    interrupted = tiny_job("train.compile=true", "eval.start_epoch=1", folder="interrupted")
    with monkeypatch.context() as patch:
        signal_at(patch, SyntheticLoader, epoch=1, step=2)
        assert run(interrupted, monkeypatch) == exit_codes.PREEMPTED
    saved = final(interrupted)
    assert saved["progress"]["global_step"] == STEPS + 3
    assert not [key for key in saved["model"] if key.startswith(("_orig_mod.", "module."))]

    eager = tiny_job("train.compile=false", "eval.start_epoch=1", folder="eager")
    shutil.copytree(interrupted.checkpoint_dir, eager.checkpoint_dir)
    assert run(eager, monkeypatch) in (exit_codes.SUCCESS, exit_codes.NOT_REACHED)
    assert final(eager)["progress"]["global_step"] == 2 * STEPS

    assert run(interrupted, monkeypatch) in (exit_codes.SUCCESS, exit_codes.NOT_REACHED)  # compiled again
    assert_same_weights(final(reference), final(interrupted))


@pytest.mark.slow
def test_loss_scaler_state_survives_resume(one_rank, monkeypatch, capsys):
    from jobs.data.images import SyntheticLoader

    settings = ("train.precision=amp-fp16", "train.channels_last=false")
    reference = tiny_job(*settings, folder="reference")
    assert run(reference, monkeypatch) == exit_codes.NOT_REACHED
    interrupted = tiny_job(*settings, folder="interrupted")
    with monkeypatch.context() as patch:
        signal_at(patch, SyntheticLoader, epoch=1, step=1)
        assert run(interrupted, monkeypatch) == exit_codes.PREEMPTED
    scaler_at_stop = final(interrupted)["scaler"]
    assert scaler_at_stop["_growth_tracker"] > 0  # mid-way through a growth interval: worth keeping
    assert run(interrupted, monkeypatch) == exit_codes.NOT_REACHED

    expected, got = final(reference), final(interrupted)
    assert got["scaler"]["scale"] == expected["scaler"]["scale"]
    assert got["scaler"]["_growth_tracker"] == expected["scaler"]["_growth_tracker"] == 2 * STEPS
    assert_same_weights(expected, got)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[warn]")]
    native = torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert len(warnings) == (0 if native else 3), warnings  # one line at each of the three starts


@pytest.mark.slow
def test_compile_recompiles_a_bounded_number_of_times_on_changing_batch_shapes(one_rank, monkeypatch,
                                                                               translation_root):
    from jobs.data.text import TextLoader

    monkeypatch.setenv("PODRUN_DATA", str(translation_root))
    shapes = set()
    original = TextLoader.epoch

    def recording(self, epoch, skip=0):
        for batch in original(self, epoch, skip):
            shapes.add((tuple(batch.src.shape), tuple(batch.tgt_in.shape)))
            yield batch

    monkeypatch.setattr(TextLoader, "epoch", recording)
    signal_at(monkeypatch, TextLoader, epoch=0, step=STOP_AFTER - 1)
    fresh_compile_state()
    job = tiny_job("train.compile=true", "data.max_tokens=512", ref="transformer:tiny",
                   base=["train.epochs=1", "eval.start_epoch=99", "train.log_every=10"])
    assert run(job, monkeypatch) == exit_codes.PREEMPTED
    assert final(job)["progress"]["global_step"] == STOP_AFTER
    assert len(shapes) >= STOP_AFTER // 2  # nearly every batch has a shape of its own
    assert len(recompiles()) <= MAX_RECOMPILES, recompiles()


def launch_two_ranks(*settings: str) -> tuple[int, str]:
    """``podrun launch resnet50:tiny`` with 2 local ranks and the tiny settings; (exit code, rank 0's log)."""
    from orchestrator.spec.jobstore import list_records

    argv = ["launch", "resnet50:tiny", "--set", "tasks_per_node=2"]
    for setting in (*TINY, f"data.synthetic_samples={2 * BATCH * STEPS}", *settings):
        argv += ["--set", setting]
    code = main(argv)
    (record,) = list_records(Path(os.environ["PODRUN_HOME"]))
    return code, (Path(record.job_dir) / "logs" / "rank0.log").read_text()


@pytest.mark.slow
def test_the_loop_talks_to_other_ranks_once_per_stop_check_not_once_per_step(local_env):
    every, log_every, epochs = 3, 4, 2
    code, log = launch_two_ranks(f"train.stop_check_every={every}", f"train.log_every={log_every}",
                                 f"train.epochs={epochs}", "eval.start_epoch=1")
    assert code in (exit_codes.SUCCESS, exit_codes.NOT_REACHED), log[-2000:]
    steps = epochs * STEPS
    reports = len([s for s in range(1, steps + 1) if s % log_every == 0 or s % STEPS == 0])
    votes = steps // every + (epochs - 1)  # one vote every `every` steps, and one between epochs
    all_reduce = reports + votes + 1  # + the evaluation's sum
    gather = epochs  # the RNG states of each checkpoint, to rank 0 only
    line = re.search(r"\[comm\] .*", log).group(0)
    assert line == (f"[comm] {all_reduce + 1 + gather} collectives in {steps} optimizer steps "
                    f"(all_gather_object 1, all_reduce {all_reduce}, gather_object {gather})")  # 1: the host names
    assert votes < steps / 2  # a vote after every step would be `steps` collectives


@pytest.mark.slow
def test_ddp_and_compile_on_two_ranks_reach_the_target(local_env):
    code, log = launch_two_ranks("train.compile=true", "train.epochs=6", "eval.target=0.9", "eval.start_epoch=0")
    assert code == exit_codes.SUCCESS, log[-3000:]
    assert "[compile] torch.compile" in log and "[done] reached target" in log
    from orchestrator.spec.jobstore import list_records

    (record,) = list_records(local_env)
    saved = load_checkpoint(latest_checkpoint(Path(record.checkpoint_dir)))
    assert not [key for key in saved["model"] if key.startswith(("_orig_mod.", "module."))]


@pytest.mark.parametrize("job, settings, needle", [
    ("resnet50:tiny", ["train.precision=tf32"], "tf32 is a mode of NVIDIA Tensor Cores"),
    ("recipes/jobs/resnet50-dgx2.yaml", ["train.precision=amp-bf16"],
     "V100-SXM3-32GB has no bf16 Tensor Cores: use --set train.precision=amp-fp16"),
    ("resnet50:tiny", ["train.compile=true"], "needs a C++ compiler"),
])
def test_a_mode_the_device_cannot_run_is_one_line_at_render_time(podrun_home, capsys, monkeypatch, tmp_path,
                                                                 job, settings, needle):
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler here (the other cases need none)
    monkeypatch.delenv("CXX", raising=False)
    argv = ["render", job]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("podrun: error: ") and needle in err and err.count("\n") == 1, err


def test_the_precision_rules_know_which_gpus_lack_bf16_and_tf32():
    from jobs.contract.modes import precision_problem

    assert "use --set train.precision=amp-fp16" in precision_problem("amp-bf16", "cuda", capability=(7, 0))
    assert "use --set train.precision=fp32" in precision_problem("tf32", "cuda", gpu="Tesla T4")
    for ok in [("amp-bf16", "cuda", None, (8, 0)), ("amp-bf16", "cuda", "H100-SXM5-80GB", None),
               ("amp-fp16", "cuda", "V100-SXM3-32GB", None), ("amp-bf16", "cpu", None, None)]:
        assert precision_problem(*ok) is None, ok


@pytest.mark.parametrize("deferred, lands_at", [(False, 6), (True, 9)])
def test_a_stop_lands_within_one_vote_on_cpu_and_two_on_gpus(deferred, lands_at):
    from jobs.rank.stopping import StopVote

    vote = StopVote(every=3, device=torch.device("cpu"), world_size=2)  # no process group: the sum is this rank's
    vote.deferred = deferred  # what a CUDA device sets: read each vote at the next one
    stopped = [step for step in range(1, 13) if vote.after_step(step, requested=step >= 4)]
    assert stopped[0] == lands_at
    # Between epochs a settle first reads the vote still in flight (step 12's, on a GPU), then votes at once.
    assert vote.settle(False) == deferred


@pytest.mark.slow
def test_one_rank_takes_the_votes_collective_path_when_a_test_asks(one_rank, monkeypatch):
    """``ONE_RANK_COLLECTIVES``: a one-rank gloo group runs a real all-reduce per vote, and the stop lands."""
    from jobs.data.images import SyntheticLoader
    from jobs.rank import dist

    monkeypatch.setattr(dist, "ONE_RANK_COLLECTIVES", True)
    signal_at(monkeypatch, SyntheticLoader, epoch=0, step=2)  # before step 3
    before = dist.COLLECTIVES["all_reduce"]
    job = tiny_job("train.stop_check_every=1")
    assert run(job, monkeypatch) == exit_codes.PREEMPTED
    assert final(job)["progress"]["global_step"] == 3  # read at once on CPU
    assert dist.COLLECTIVES["all_reduce"] - before == 3  # a vote after each step, no progress line yet


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="not run: no GPU")
@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])  # amp-fp16's loss scaler syncs by design
def test_a_log_window_with_a_vote_every_step_never_syncs_the_gpu(one_rank, monkeypatch, precision):
    """Between two log boundaries nothing may synchronize: CUDA raises on any sync (sync debug mode).

    The vote takes NCCL's path in a one-rank group (NCCL will not put two ranks on one GPU).
    """
    from jobs.rank import dist
    from jobs.train import Trainer

    monkeypatch.setattr(dist, "ONE_RANK_COLLECTIVES", True)
    reports, original = [], Trainer._report

    def report(self, *args):
        torch.cuda.set_sync_debug_mode(0)  # a log boundary reads the loss: the one sync allowed
        original(self, *args)
        reports.append(self.state.global_step)
        if len(reports) == 1:
            torch.cuda.set_sync_debug_mode("error")  # until the next boundary

    monkeypatch.setattr(Trainer, "_report", report)
    job = tiny_job(f"train.precision={precision}", "train.stop_check_every=1", "train.log_every=3",
                   "train.epochs=1").model_copy(update={"device": "cuda"})
    try:
        code = run(job, monkeypatch)  # under "error": votes 3, 4, 5 (4 and 5 read the one before), steps 4 to 6
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert code == exit_codes.NOT_REACHED and reports == [3, 6]
