"""The training loop's progress: where it is, what it measured, what it has seen.

One :class:`LoopState` per rank (:class:`jobs.train.Trainer`). A checkpoint stores it as a
plain dict of numbers, strings and lists (:meth:`LoopState.to_dict`), never as a pickled
object, so that checkpoints stay loadable with ``torch.load(weights_only=True)`` and by
other versions of podrun; :meth:`LoopState.from_dict` reads old and new ones alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class LoopState:
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # micro-batches done in the current epoch (the data position)
    global_step: int = 0  # optimizer steps (the LR schedule)
    train_time_s: float = 0.0  # time-to-train so far, across resumed attempts
    items: int = 0  # samples (or tokens) trained on, all ranks
    best_metric: float = 0.0  # the best evaluation so far, in the task's direction
    evals: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric)
    time_lost_s: float = 0.0  # from a checkpoint to the restart that resumed it
    saved_at: float = 0.0  # wall clock of the last checkpoint (0: none yet)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (jobs.rank.phases)
    world_size: int = 0  # the ranks that wrote it (0: a checkpoint of an earlier release)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for the checkpoint (``evals`` as lists)."""
        data = asdict(self)
        data["evals"] = [[int(epoch), float(value)] for epoch, value in self.evals]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        """The state a checkpoint holds; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        state = cls(**{key: value for key, value in data.items() if key in known})
        state.evals = [(int(epoch), float(value)) for epoch, value in state.evals]
        state.phases = dict(state.phases or {})
        return state

    def on_world_size(self, world_size: int) -> None:
        """Carry the data position over to ``world_size`` ranks (an elastic run resumed with fewer or more).

        A rank's micro-batch is the same size on any world size, so the samples done in the epoch,
        ``step_in_epoch x world_size x batch``, give the new position. Checkpoints are taken between
        optimizer steps, and the global batch is kept (:func:`jobs.contract.job.resized`), so it divides.
        """
        if self.world_size and self.world_size != world_size:
            self.step_in_epoch = self.step_in_epoch * self.world_size // world_size
        self.world_size = world_size
