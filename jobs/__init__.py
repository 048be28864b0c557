"""What every rank runs. It never imports :mod:`orchestrator` (the launcher builds on it).

Read it from the bottom up. The contract between the launcher and a rank comes first:

* :mod:`jobs.recipe` - the recipe schema (model, data, optimizer, schedule, train, eval);
* :mod:`jobs.job` - the resolved job a rank receives (``config.resolved.yaml``);
* :mod:`jobs.config_io` - YAML reading and validation, with one-line errors;
* :mod:`jobs.errors`, :mod:`jobs.exit_codes` - errors, exit codes and the outcome file;
* :mod:`jobs.progress` - the ``[train]`` line the launcher parses;
* :mod:`jobs.checkpoint_index` - checkpoint names and ``run.json``;
* :mod:`jobs.spool` - the MLflow spool that ``podrun sync`` replays;
* :mod:`jobs.placement` - who and where this rank is (rank env, host lists).

Then the rank itself: :mod:`jobs.run` (the entrypoint), :mod:`jobs.train` (the one
training loop), :mod:`jobs.tasks` / :mod:`jobs.translation` (what differs per recipe),
:mod:`jobs.dist` (DDP or Horovod), :mod:`jobs.data` (input), :mod:`jobs.optim`,
:mod:`jobs.checkpoint`, :mod:`jobs.mlperf_log`, and tracking (:mod:`jobs.run_tracking`,
:mod:`jobs.tracker`, :mod:`jobs.sender`, :mod:`jobs.secret_filter`, :mod:`jobs.mlflow_send`).
"""
