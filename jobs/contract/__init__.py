"""What the launcher and a rank agree on: the recipe and resolved-job schemas, YAML reading, errors and
exit codes, the progress line, checkpoint names and ``run.json``, metric names, placement, preflight
settings and the secret filter. Imports nothing else of podrun, and nothing heavy (no torch)."""
