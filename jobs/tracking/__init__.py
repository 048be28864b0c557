"""Rank 0's MLflow record and its side processes: what a run records (:mod:`run_tracking`), the
spool and tracker on the training path, the sender process that talks to MLflow (``python -m
jobs.tracking.sender``) with its record kinds (datasets, the model registry, the run page and
charts), per-node system metrics, and the store URI rules. MLflow is imported only in the sender."""
