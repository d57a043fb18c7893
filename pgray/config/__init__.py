"""Every typed config of pgray, validated once on load with errors that name the key.

- `base`: the one validator (`from_dict`), `check`, `check_eps`, YAML loading.
- `experiment`: one experiment (data, model, pseudo, loss, train, eval sections).
- `certify`: certification by percentile smoothing (the `eval.certify` section).
- `pseudo`: the pseudo-anomaly generator's parameters (the `pseudo` section).
- `search_space`, `search_sections`, `param_spec` and `keys`: what a sweep searches (one
  searched key's distribution in `param_spec`), and dotted config keys.
- `benchmark`: a benchmark grid.
- `args`: command-line flags shared by the commands, turned into an ExperimentConfig.
- `search_spaces/`: the built-in search spaces (package data).

No heavy imports anywhere in this package: the commands' `--help` imports it.
"""

from pgray.config.certify import CertifyConfig
from pgray.config.experiment import (
    PROXY_METRICS,
    AttackConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    SuiteConfig,
    ThreatConfig,
    TrainConfig,
    merge,
    tiny_model_config,
)
from pgray.config.pseudo import PseudoConfig

__all__ = [
    "PROXY_METRICS", "AttackConfig", "CertifyConfig", "DataConfig", "EvalConfig", "ExperimentConfig",
    "LossConfig", "ModelConfig", "PseudoConfig", "SuiteConfig", "ThreatConfig",
    "TrainConfig", "merge", "tiny_model_config",
]
