"""The launcher: cluster profiles and job specs, resolution and scaling, the CLI, the backends.

It builds on :mod:`jobs` (the rank runtime) and hands each rank a :class:`jobs.job.ResolvedJob`:

* :mod:`orchestrator.profiles` - cluster profiles (``cluster.yaml``);
* :mod:`orchestrator.paths` - where podrun finds its files (search order, bundled files, ``init``);
* :mod:`orchestrator.jobspec` - job specs and the launch plan;
* :mod:`orchestrator.resolve`, :mod:`orchestrator.scaling` - spec + recipe + profile -> plan;
* :mod:`orchestrator.cli` - ``podrun``;
* :mod:`orchestrator.backends` - local, Slurm and Ray, one file each, imported when used;
* :mod:`orchestrator.ray_runtime`, :mod:`orchestrator.ray_job` - what a Ray job carries, its driver;
* :mod:`orchestrator.tunnel` - SSH to a login node;
* :mod:`orchestrator.datasets`, :mod:`orchestrator.translation_toy` - ``podrun data``.
"""
