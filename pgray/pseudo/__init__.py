"""Foreground-aware pseudo-anomalies (docs/method.md, "Pseudo-anomalies").

- `generator`: one self cut-paste pseudo-anomaly per call (`PseudoAnomalyGenerator`).
- `ops`, `noise`: the transforms of the pasted crop.
- `dataset`: (normal image, pseudo-anomaly) pairs over a dataset of normal images.
- `preview`: a grid PNG to look at them; `python -m pgray.pseudo preview` is its command.
Their parameters are `pgray.config.pseudo.PseudoConfig`.
"""
