"""Exit codes shared by the ranks and the launcher (kept free of heavy imports)."""

SUCCESS = 0  # the recipe reached its target (run_stop status=success)
FAILED = 1  # an error
NOT_REACHED = 2  # all epochs ran without reaching the target (run_stop status=aborted)
PREEMPTED = 3  # stopped on a signal after writing a checkpoint; resume or requeue it

DESCRIPTIONS = {
    SUCCESS: "reached target",
    FAILED: "failed",
    NOT_REACHED: "finished without reaching target",
    PREEMPTED: "stopped after a checkpoint (resume with --resume)",
}
