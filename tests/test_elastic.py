"""An elastic Ray run: a lost node, and the run goes on with fewer workers and the same global batch."""

from __future__ import annotations

import pytest

from jobs.contract.errors import ConfigError
from jobs.rank.state import LoopState
from orchestrator.backends.ray_job import worker_count
from orchestrator.spec.resolve import load_job


@pytest.mark.fast
def test_fewer_ranks_keep_the_global_batch_through_gradient_accumulation(podrun_home):
    from jobs.contract.job import resized

    job = load_job("resnet50:tiny", ["tasks_per_node=2"]).job
    one = resized(job, 1)
    assert (one.world_size, one.derived.update_freq) == (1, 2 * job.derived.update_freq)
    assert one.derived.batch_size * one.world_size * one.derived.update_freq == \
        job.derived.batch_size * job.world_size * job.derived.update_freq  # the global batch
    assert one.derived.lr == job.derived.lr and "elastic: 1 of 2 ranks" in one.derived.notes[-1]
    assert resized(job, 2) is job


@pytest.mark.fast
def test_a_world_size_that_cannot_keep_the_global_batch_is_one_line(podrun_home):
    from jobs.contract.job import resized

    job = load_job("resnet50:tiny", ["tasks_per_node=2"]).job
    with pytest.raises(ConfigError, match="cannot keep its global batch on 3"):
        resized(job, 3)


@pytest.mark.fast
def test_the_data_position_carries_over_to_another_world_size():
    state = LoopState(step_in_epoch=4, world_size=2)  # 4 micro-batches on 2 ranks: 8 rank-batches done
    state.on_world_size(1)
    assert (state.step_in_epoch, state.world_size) == (8, 1)
    old = LoopState.from_dict({"step_in_epoch": 4})  # an earlier release's checkpoint: no world size
    old.on_world_size(1)
    assert old.step_in_epoch == 4


@pytest.mark.fast
def test_ray_asks_for_a_range_of_workers_only_when_elastic():
    assert worker_count(4, None) == 4 and worker_count(4, 4) == 4 and worker_count(4, 2) == (2, 4)


@pytest.mark.fast
def test_the_ray_driver_takes_the_outcome_from_rank_0s_return_value_or_else_the_last_report():
    from types import SimpleNamespace

    from jobs.contract import exit_codes
    from orchestrator.backends.ray_job import outcome

    not_reached = exit_codes.NOT_REACHED
    assert outcome(SimpleNamespace(return_value=not_reached, metrics={})) == not_reached
    assert outcome(SimpleNamespace(metrics={"exit_code": not_reached})) == not_reached  # a Ray without return_value
    assert outcome(SimpleNamespace(return_value=None, metrics={"epoch": 3})) == exit_codes.FAILED  # the run failed
