"""The launcher: ``podrun``. It builds on :mod:`jobs` and hands each rank a :class:`jobs.contract.job.ResolvedJob`.

The commands sit at the top: :mod:`orchestrator.cli` (``podrun``), :mod:`orchestrator.launch`
(the one launch path: resolve, check, submit, follow, record), :mod:`orchestrator.sweep`,
:mod:`orchestrator.export`, :mod:`orchestrator.preflight_cmd` and :mod:`orchestrator.console`
(what the terminal shows). Below them, in layers (``lint-imports`` checks it):

* :mod:`orchestrator.studies` - phases, predictions, sweep reports and their plots;
* :mod:`orchestrator.datasets` - ``podrun data`` (digits, synthetic images, the toy corpus);
* :mod:`orchestrator.backends` - how ranks start: local, Slurm, Ray (one file each), SSH;
* :mod:`orchestrator.preflight` - what happens to a node that fails its checks;
* :mod:`orchestrator.spec` - cluster profiles, job specs, resolution and scaling, job records.

``python -m orchestrator.preflight_gate`` and ``python -m orchestrator.ray_job``, the names of
earlier releases, still start their modules (see :data:`jobs.MOVED`).
"""

import jobs  # noqa: F401 - installs the finder of moved module names
