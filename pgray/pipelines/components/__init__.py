"""The pipelines' parts that decide or do one thing, on the driver or in a worker, without
orchestrating: specs (the spaces and benchmarks a run derives), targets (which categories under
which root, checked before anything starts), the job grid and its worker, checkpoint-file
rules, the pick of trials, and the baseline fits. Nothing here imports `pipelines.runners`, a
driver (`pipelines/*.py`) or a command."""
