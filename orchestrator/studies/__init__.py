"""What the runs measured and what they predict: the launcher's phases of a run, ``podrun predict``
(its model, MLPerf's RCPs and the check against published results), sweep reports and plots."""
