"""What a job is, before it runs: cluster profiles, job specs, resolution and the scaling rule, the
job's environment and secrets, the reproducing command, where files are found, the backend names
and the records of submitted jobs (``$PODRUN_HOME/jobs``)."""
