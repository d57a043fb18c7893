"""Attacks on anomaly detectors, in the input's [0, 1] pixel space.

- `objectives`: what an attack maximises (the reference mask objective, the signed image score).
- `pgd`: pgray's PGD loop (the reference protocol and its stronger variants).
- `torchattacks_adapter`: the same objectives through torchattacks (PGD, APGD).
"""
