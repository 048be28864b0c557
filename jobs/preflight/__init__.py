"""Preflight: check every node of an allocation before training spends it.

Each node runs ``python -m jobs.preflight CONFIG`` (the first srun step of a Slurm job,
one Ray task per node, or ``podrun preflight JOB``). Local rank 0 of every node checks
its GPUs (NVML), InfiniBand ports (sysfs), data and checkpoint roots, and software; then
every rank joins one all-reduce bus-bandwidth test and a clock-skew measurement. Rank 0
writes a node x check table (``<job_dir>/preflight/report.txt``) and exits
:data:`jobs.contract.exit_codes.PREFLIGHT_FAILED` when a node failed a check. What to do about a
bad node (exclude it and requeue, or stop) is the launcher's decision
(:mod:`orchestrator.preflight.policy`); podrun never drains a node.

* :mod:`jobs.contract.preflight_spec` - which checks, thresholds and timeouts (what a node receives);
* :mod:`jobs.preflight.result` - a check's outcome, the report and its table;
* :mod:`jobs.preflight.gpu`, :mod:`jobs.preflight.infiniband`, :mod:`jobs.preflight.storage`,
  :mod:`jobs.preflight.software`, :mod:`jobs.preflight.collectives` - the checks;
* :mod:`jobs.preflight.node` - the runner (timeouts, rendezvous, report);
* :mod:`jobs.preflight.record` - what the training run records in MLflow.
"""
