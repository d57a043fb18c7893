"""The driver's side of a run: the evaluation dispatcher (jobs on Ray actors or in this
process), the trainings (one Tune experiment, each checkpoint handed on as it lands) and the
baseline fits. Runners import `pipelines.components`, never a driver or a command."""
