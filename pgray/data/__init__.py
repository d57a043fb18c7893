"""Datasets: layouts by name (`registry`, `layouts`), samples -> tensors (`dataset`), pixel I/O
(`imageio`), the tree checker (`check`), foreground masks (`foreground`) and the generated
dataset (`synthetic`). `python -m pgray.data` is its command."""
