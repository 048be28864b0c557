"""The machinery around the training loop on one rank: communication (DDP or Horovod), the optimizer
and LR schedule, precision, the stop vote, the progress watchdog, the phase clock, checkpoints and
their lock, the MLPerf log, Horovod's rendezvous server, and the loop's state."""
