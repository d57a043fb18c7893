"""Attacks on anomaly detectors, in the input's [0, 1] pixel space.

- `objectives`: what an attack maximises (the reference mask objective, the signed image score).
- `pgd`: pgray's PGD loop (the reference protocol and its stronger variants).
- `torchattacks_adapter`: the same objectives through torchattacks (PGD, APGD, Square).
- `patch`, `patch_search`: the patch threat's PGD and its black-box random search.
- `suite`, `checks`, `precision`: the adaptive suite, its reliability flags, and the
  precision its attacks run in.
"""
