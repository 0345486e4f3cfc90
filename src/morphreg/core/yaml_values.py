"""YAML read as people write numbers: ``1e-3`` is a float, as in YAML 1.2, JSON and Python, where
PyYAML's YAML 1.1 rules make it the string "1e-3" (they want a dot: ``1.0e-3``). The one reader of
config files, preset files and ``--set`` values."""
from __future__ import annotations

import re

import yaml

# YAML 1.2's float, less what YAML 1.1 already reads (numbers with a dot, .inf, .nan): an exponent without a dot.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class NumbersLoader(yaml.SafeLoader):
    """PyYAML's safe loader with 1e-3-style floats."""


NumbersLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str):
    """``text`` parsed like ``yaml.safe_load``, with 1e-3-style floats (raises yaml.YAMLError as it does)."""
    return yaml.load(text, Loader=NumbersLoader)  # noqa: S506 - a SafeLoader subclass
