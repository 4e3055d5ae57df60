"""A config's YAML as a raw mapping: reading the file, and applying ``--set a.b=value`` overrides.

Departure from plain PyYAML: PyYAML follows YAML 1.1, where ``1e-6`` (no dot) is a string. The loader
here reads it as a float, as YAML 1.2 does, so ``actor_lr: 1e-6`` means what it says. A key given twice
in one mapping is an error rather than silently the last one. ``agentrl.config.load_config`` builds the
checked config from the mapping. This module imports no torch.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from agentrl.config_fields import ConfigError, show


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``1e-6``), and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may be overridden below it
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, what: str) -> Any:
    """``text`` read by ``_Loader``; ``what`` names it in the one-line error for bad YAML."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: invalid YAML: {e}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of sections in the YAML file ``path`` (``{}`` for an empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: no such file {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: cannot read {str(p)!r}: {e}") from None
    data = parse_yaml(text, f"config {str(p)!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(p)!r}: expected a mapping of sections, got {show(data)}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``--set a.b=value`` to the raw mapping ``data``; the value is read as one YAML value."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set: expected section.key=value (ppo.gamma=0.99), got {item!r}")
    value = parse_yaml(raw, f"--set {key}")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: expected a mapping, got {show(child)}")
        node = child
    node[parts[-1]] = value
