"""What every rank runs. It never imports :mod:`orchestrator` (the launcher builds on it).

The entry points sit at the top, where the launchers start them: :mod:`jobs.run`
(``python -m jobs.run CONFIG``, every rank of every backend), :mod:`jobs.ray_worker` (a Ray
Train worker) and :mod:`jobs.train` (the one training loop). Below them, in layers (a wing
imports only the wings under it; ``lint-imports`` checks it):

* :mod:`jobs.tracking` - rank 0's MLflow record and its side processes (sender, system metrics);
* :mod:`jobs.preflight` - the node checks before training (``python -m jobs.preflight``);
* :mod:`jobs.tasks` - one file per recipe: what differs between recipes;
* :mod:`jobs.data`, :mod:`jobs.models` - input pipelines and networks;
* :mod:`jobs.rank` - the machinery around the loop (communication, optimizer, precision,
  stop votes, watchdog, phases, checkpoints, the MLPerf log);
* :mod:`jobs.contract` - what the launcher and a rank agree on (recipe, resolved job, exit
  codes, the progress line, checkpoint names, metric names, placement).
"""

import importlib.abc
import importlib.util
import sys

# ``python -m`` names that jobs already submitted still start (a requeued Slurm job runs
# the script it was submitted with): old name -> module.
MOVED = {
    "jobs.horovod_rendezvous": "jobs.rank.horovod_rendezvous",
    "jobs.sender": "jobs.tracking.sender",
    "jobs.system_metrics": "jobs.tracking.system_metrics",
    "orchestrator.preflight_gate": "orchestrator.preflight.slurm_gate",
    "orchestrator.ray_job": "orchestrator.backends.ray_job",
    "orchestrator.predict_mlperf": "orchestrator.studies.predict_validate",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Finds a moved module under its old name, for ``python -m OLD`` (runpy asks for its spec)."""

    def find_spec(self, fullname, path, target=None):
        new = MOVED.get(fullname)
        found = importlib.util.find_spec(new) if new else None
        # the same file, loaded under the old name (a loader answers only to the name it was made for)
        return importlib.util.spec_from_file_location(fullname, found.origin) if found else None


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
