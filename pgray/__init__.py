"""pgray: PatchGuard adversarially robust anomaly detection, trained and benchmarked on Ray."""

__version__ = "0.2.0"
