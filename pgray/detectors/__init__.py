"""Detectors behind one interface (`base`), so that every one is evaluated under the same
attacks: PatchGuard (trained by pgray), the reference code's released PatchGuard weights, and
anomalib baselines with gradients re-enabled (`anomalib_models`). `registry` picks them by
name; `loading` reads any of their checkpoints; `python -m pgray.detectors list` prints them.
"""
