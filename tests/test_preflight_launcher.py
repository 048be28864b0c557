"""The launcher's side of preflight: defaults, bad input at render time, the exclude decision, the record."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from jobs.contract.preflight_spec import CHECKS
from jobs.preflight.record import preflight_record
from jobs.preflight.result import Report, failed, passed
from orchestrator.cli import main
from orchestrator.preflight.policy import Excluded, decide, parse_sinfo_nodes, status_note
from orchestrator.preflight.ray_tasks import not_started
from orchestrator.spec.resolve import load_job

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

REPO = Path(__file__).resolve().parent.parent


def cluster_file(tmp_path: Path, **profile) -> Path:
    base = {"scheduler": "slurm", "nodes": 4, "gpus_per_node": 0, "state_dir": str(tmp_path / "state")}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"c": {**base, **profile}}}))
    return path


def render_error(capsys, path: Path, *extra: str) -> str:
    code = main(["render", "resnet50:tiny", "--cluster-file", str(path), "--set", "cluster=c", *extra])
    assert code == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_on_for_slurm_and_ray_off_for_local_and_no_preflight_skips_it(tmp_path, podrun_home, capsys):
    path = cluster_file(tmp_path)
    assert load_job("resnet50:tiny", ["cluster=c"], cluster_file=str(path)).job.preflight is not None
    assert load_job("resnet50:tiny", ["cluster=c"], cluster_file=str(path), backend="ray").job.preflight
    assert load_job("resnet50:tiny", ["cluster=c"], cluster_file=str(path), backend="local").job.preflight is None
    off = load_job("resnet50:tiny", ["cluster=c", "profile.preflight.enabled=false"], cluster_file=str(path))
    assert off.job.preflight is None
    assert main(["render", "resnet50:tiny", "--cluster-file", str(path), "--set", "cluster=c"]) == 0
    assert "-m jobs.preflight" in capsys.readouterr().out
    assert main(["render", "resnet50:tiny", "--cluster-file", str(path), "--set", "cluster=c", "--no-preflight"]) == 0
    assert "jobs.preflight" not in capsys.readouterr().out


def test_profile_expectations_reach_the_nodes(tmp_path, podrun_home):
    path = cluster_file(tmp_path, gpus_per_node=8, gpu="A100-SXM4-80GB",
                        interconnect={"hcas": ["mlx5_0", "mlx5_1:1"]},
                        preflight={"min_busbw_gbps": 150, "ib_rate_gbps": 200, "timeouts": {"gpu": 5}})
    spec = load_job("resnet50:tiny", ["cluster=c"], cluster_file=str(path)).job.preflight
    assert (spec.gpus_per_node, spec.gpu_model, spec.hcas) == (8, "A100-SXM4-80GB", ["mlx5_0", "mlx5_1:1"])
    assert (spec.min_busbw_gbps, spec.ib_rate_gbps, spec.timeouts.gpu, spec.timeouts.storage) == (150, 200, 5, 30)


@pytest.mark.parametrize("preflight,expected", [
    ({"min_busbw_gbps": "fast"}, "profiles.c.preflight.min_busbw_gbps: Input should be a valid number"),
    ({"timeouts": {"gpu": -1}}, "profiles.c.preflight.timeouts.gpu: Input should be greater than 0"),
    ({"checks": ["gpu", "nvlink"]}, "profiles.c.preflight.checks.1: Input should be 'gpu', 'infiniband', "
                                    "'collectives', 'storage' or 'software' (got 'nvlink')"),
    ({"checks": ["infiniband"]}, "preflight.checks lists infiniband but interconnect.hcas is empty"),
    ({"exclude_bad": "sometimes"}, "profiles.c.preflight.exclude_bad: Input should be a valid boolean"),
    ({"max_free_gb": 3}, "unknown key 'profiles.c.preflight.max_free_gb'; valid keys here: allreduce_mb, checks"),
])
def test_bad_preflight_input_is_one_line_at_render(tmp_path, podrun_home, capsys, preflight, expected):
    err = render_error(capsys, cluster_file(tmp_path, preflight=preflight))
    assert err.startswith("podrun: error: ") and expected in err, err


# ------------------------------------------------------------------ the decision


SINFO = "node1 allocated\nnode2 allocated\nnode3 idle\nnode4 down*\nnode5 drained\n"  # sinfo -h -N -o '%N %T'


def test_sinfo_states():
    assert parse_sinfo_nodes(SINFO + "node1 allocated\n") == {
        "node1": "allocated", "node2": "allocated", "node3": "idle", "node4": "down*", "node5": "drained"}


def test_exclude_and_requeue_at_the_same_size_when_enough_nodes_are_left():
    failures = {"node2": ["storage: checkpoint root: /x not writable (No space left on device)"]}
    decision = decide(failures, exclude_bad=True, can_exclude=True, job_nodes=2, partition=parse_sinfo_nodes(SINFO),
                      excluded=Excluded(), max_requeues=3)
    assert (decision.action, decision.exclude) == ("requeue", ["node2"])
    assert decision.message == "requeueing at 2 node(s) with --exclude=node2"
    earlier = Excluded(nodes={"node3": "gpu: GPU 1 row remap pending (reset the GPU)"}, requeues=1)
    again = decide(failures, exclude_bad=True, can_exclude=True, job_nodes=2, partition=parse_sinfo_nodes(SINFO),
                   excluded=earlier, max_requeues=3)
    assert again.action == "stop" and again.exclude == ["node2", "node3"]  # node1 alone is not enough
    assert "only 1 healthy node(s) are left in the partition for a 2-node job; not shrinking it" in again.message


def test_stop_without_exclude_bad_on_ray_or_after_the_requeue_budget():
    failures = {"node2": ["gpu: GPU 1 row remap pending (reset the GPU)"]}
    common = dict(job_nodes=1, partition=parse_sinfo_nodes(SINFO), excluded=Excluded(), max_requeues=3)
    off = decide(failures, exclude_bad=False, can_exclude=True, **common)
    assert off.action == "stop" and "set preflight.exclude_bad: true" in off.message
    ray = decide(failures, exclude_bad=True, can_exclude=False, **common)
    assert ray.action == "stop" and "cannot exclude nodes" in ray.message
    spent = decide(failures, exclude_bad=True, can_exclude=True, job_nodes=1, partition=parse_sinfo_nodes(SINFO),
                   excluded=Excluded(requeues=3), max_requeues=3)
    assert spent.action == "stop" and "after 3 requeue(s)" in spent.message


def test_a_ray_node_that_starts_no_checker_is_named_with_the_reason():
    ready = ["ref-h1", "ref-h2", "ref-h3"]  # one per node, in node order
    failures = not_started(["h1", "h2", "h3"], ready, pending=["ref-h3"], errors={"ref-h2": "ActorDiedError: oom"},
                           limit=120)
    assert failures == {"h2": ["start: ActorDiedError: oom"],
                        "h3": ["start: Ray started no worker on it in 120 s (see its raylet.out)"]}
    assert not_started(["h1"], ["ref-h1"], pending=[], errors={}, limit=120) == {}


def test_excluded_record_and_status_note(tmp_path):
    path = tmp_path / "excluded.json"
    assert Excluded.load(path) == Excluded()
    Excluded(nodes={"node2": "storage: full"}, requeues=1).save(path)
    assert Excluded.load(path).summary() == "node2 (storage: full)"
    path.write_text("[not, a, record")
    assert Excluded.load(path) == Excluded()
    assert status_note("preflight excluded node2 (storage: full); requeued\n") == \
        "; preflight excluded node2 (storage: full); requeued"
    assert status_note(None) == ""


def test_training_records_the_preflight_phase(tmp_path):
    folder = tmp_path / "preflight"
    bad = Report(nodes=["node2"], results={"node2": {"storage": failed("full")}}, duration_s=9.0)
    bad.write(folder / "slurm-7-0")
    good = Report(nodes=["node1"], results={"node1": dict.fromkeys(CHECKS, passed())}, duration_s=7.5)
    good.write(folder / "slurm-7-1")
    good.write(folder)
    Excluded(nodes={"node2": "storage: full"}, requeues=1).save(folder / "excluded.json")
    record = preflight_record(tmp_path)
    assert record.tags == {"preflight.excluded": "node2 (storage: full)", "preflight.result": "passed"}
    assert record.metrics == {"phase_preflight_s": 7.5}
    assert [(p.relative_to(tmp_path).as_posix(), a) for p, a in record.artifacts] == [
        ("preflight/report.txt", "preflight"), ("preflight/slurm-7-0/report.txt", "preflight/slurm-7-0"),
        ("preflight/slurm-7-1/report.txt", "preflight/slurm-7-1")]
    assert preflight_record(tmp_path / "nothing") is None
    # what the batch script reads before a restart inside the allocation: the failed nodes, one a line
    assert (folder / "slurm-7-0" / "failed-nodes.txt").read_text() == "node2\n"
    assert (folder / "slurm-7-1" / "failed-nodes.txt").read_text() == ""
