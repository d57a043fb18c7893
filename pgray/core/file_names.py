"""The names a training's files go by, in its output folder and inside each Ray Train
checkpoint: the checkpoint (the last epoch), and the proxy-selected weights beside it.

Apart from `core.checkpoint` (which imports torch) so that code that only moves or names
checkpoints (a Tune trial's driver side, a simulated trial) does not import torch."""

CHECKPOINT_FILE = "checkpoint.pt"
SELECTED_FILE = "best.pt"
