"""What happens to a node that fails preflight: the policy (exclude and requeue, or stop), the gate
that applies it inside a Slurm allocation (``python -m orchestrator.preflight.slurm_gate``) and the
Ray tasks that check each node. The checks themselves run on the nodes: :mod:`jobs.preflight`."""
