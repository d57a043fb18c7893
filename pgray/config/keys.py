"""Dotted config keys (`loss.attention_lambda`, `pseudo.severity_probs[2]`): checking that a
searched key exists in the experiment config, and applying sampled values to a config dict."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from typing import Any

from pgray.config.base import check, to_dict
from pgray.config.experiment import ExperimentConfig, merge
from pgray.config.param_spec import ParamSpec
from pgray.errors import ConfigError

# Keys the sweep owns: the data section is set per target, epochs come from the budget, and
# the held-out proxy (its images, anomalies, attacks and epochs) is the study's fixed test.
RESERVED_PREFIXES = ("data.", "train.epochs", "train.proxy_", "train.holdout_fraction")

_INDEX = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?$")


def check_applies(fixed: dict[str, Any], params: dict[str, Any], where: str) -> None:
    try:
        ExperimentConfig.from_dict(apply_params(fixed, params))
    except ConfigError as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"{where}: {shown} makes an invalid config: {err}") from None


def _split_key(key: str, where: str) -> list[tuple[str, int | None]]:
    parts = []
    for part in key.split("."):
        m = _INDEX.match(part)
        check(m is not None, where, f"{key!r} is not a dotted config key like loss.attention_lambda"
              " or loss.attention_weights[0]")
        index = m.group("index")
        parts.append((m.group("name"), None if index is None else int(index)))
    return parts


def resolve_key(key: str, spec: ParamSpec, fixed: dict[str, Any], where: str) -> Any:
    """The config type a searched key points at; errors name the key and the allowed keys."""
    for prefix in RESERVED_PREFIXES:
        check(not key.startswith(prefix), where,
              "data.* is set per target (datasets/categories), train.epochs by budget.epochs,"
              " and train.proxy_* and train.holdout_fraction make the study's fixed held-out"
              " test; they cannot be searched")
    tp: Any = ExperimentConfig
    path = ""
    value: Any = to_dict(ExperimentConfig.from_dict(fixed))
    for name, index in _split_key(key, where):
        check(dataclasses.is_dataclass(tp), where,
              f"{path or 'the config'} has no keys below it ({key!r})")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        check(name in names, where,
              f"no config key {key!r}: {path or 'the config'} has {', '.join(names)}")
        tp, value = hints[name], value[name]
        path = f"{path}.{name}" if path else name
        if index is not None:
            check(typing.get_origin(tp) is list, where, f"{path} is not a list, so [{index}]"
                  " cannot index it")
            check(index < len(value), where,
                  f"{path} has {len(value)} entries in the fixed config, so [{index}] is out of"
                  " range")
            tp, value = typing.get_args(tp)[0], value[index]
    if dataclasses.is_dataclass(tp):
        check(spec.type == "categorical" and all(isinstance(v, dict) for v in spec.values or []),
              where, f"{key} is a config section: search one of its keys, or give a categorical"
              " whose values are mappings merged into it")
    return tp


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The full config dict of `base` (defaults filled in) with each dotted key set; a mapping
    value is merged into the section it names."""
    out = to_dict(ExperimentConfig.from_dict(base))
    for key, value in params.items():
        node = out
        parts = _split_key(key, key)
        for name, index in parts[:-1]:
            node = node[name] if index is None else node[name][index]
        name, index = parts[-1]
        if index is not None:
            node[name] = list(node[name])
            node[name][index] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(node.get(name), dict):
            node[name] = merge(node[name], value)
        else:
            node[name] = copy.deepcopy(value)
    return out
