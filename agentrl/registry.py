"""Environments by name: ``make("graph_nav", size="small")`` and the listing behind ``agentrl envs``.

A ``Registry`` maps a name to a factory (a class or function taking keyword options) and a one-line
description. Packages add environments through the ``agentrl.envs`` entry-point group: each entry point
names a function that calls ``register`` on the registry it is given (or on the default one). Entry points
load lazily, on the first lookup, and every process loads the same ones, so a rollout worker started
elsewhere sees the same names without anything being handed to it. A name can also be a ``module:attr``
import path, for an environment that was never registered: that attribute must be an environment class
(with ``reset``, ``step``, ``expert_action`` and ``state_digest``) or a function whose return annotation
is one, checked before anything is called, so a config's ``env.name`` cannot run an arbitrary callable
(``os:system``) with its options. Importing the module still runs its top-level code: a config, and a
run directory's ``config.yaml`` that ``--resume`` reads, are trusted input (docs/reliability.md).

The module-level ``register``, ``make`` and ``list_envs`` use one default ``Registry``; code that wants
its own set of names makes its own ``Registry``. This module imports no torch.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from agentrl.env import Env

ENTRY_POINT_GROUP = "agentrl.envs"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class EnvSpec:
    """One registered environment: its name, what builds it, and the line ``agentrl envs`` prints."""

    name: str
    factory: Callable[..., Env]
    description: str


class Registry:
    """Environment names mapped to factories; see the module docstring."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._specs: dict[str, EnvSpec] = {}
        self._loaded = not load_entry_points

    def register(self, name: str, factory: Callable[..., Env], *, description: str = "") -> None:
        """Add ``name``; registering a name twice with a different factory is a ValueError."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"name: expected lower-case letters, digits and '_' (graph_nav), got {name!r}")
        if not callable(factory):
            raise ValueError(f"factory: environment {name!r} needs a callable, got {type(factory).__name__}")
        old = self._specs.get(name)
        if old is not None and old.factory is not factory:
            raise ValueError(f"name: environment {name!r} is already registered (by {old.factory!r})")
        line = " ".join(str(description).split())
        self._specs[name] = EnvSpec(name, factory, line)

    def make(self, name: str, **options: Any) -> Env:
        """Build the environment ``name`` (or ``module:attr``) with keyword ``options``.

        An unknown name is a ValueError listing the known ones; an option the factory does not take is
        a ValueError naming it; so is an ImportError the factory raises (a package it needs is missing).
        """
        factory = self._factory(name)
        _check_options(name, factory, options)
        try:
            env = factory(**options)
        except ImportError as e:  # a package the environment needs is missing: a setup error, one line
            raise ValueError(f"env: {name!r} needs a package that is not installed ({e})") from e
        if not isinstance(env, Env):
            raise ValueError(f"env: {name!r} built a {type(env).__name__}, which is not an Env")
        return env

    def list_envs(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every registered environment, sorted by name."""
        self._load()
        return sorted((s.name, s.description) for s in self._specs.values())

    def spec(self, name: str) -> EnvSpec:
        """The registration of ``name``; ValueError listing the known names if there is none."""
        self._load()
        if name not in self._specs:
            known = ", ".join(sorted(self._specs)) or "(none)"
            raise ValueError(f"env: unknown environment {name!r}; known: {known}")
        return self._specs[name]

    def _factory(self, name: str) -> Callable[..., Env]:
        if isinstance(name, str) and ":" in name:
            module, _, attr = name.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"env: cannot import {name!r} ({e})") from e
            if not _builds_env(factory):
                raise ValueError(
                    f"env: {name!r} is not an environment class or a function annotated to return one; "
                    "only those are called with the options"
                )
            return factory
        return self.spec(name).factory

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            hook = ep.load()
            if "registry" in inspect.signature(hook).parameters:
                hook(registry=self)
            else:
                hook()


_ENV_METHODS = ("reset", "step", "expert_action", "state_digest")


def _is_env_class(obj: Any) -> bool:
    return inspect.isclass(obj) and all(callable(getattr(obj, m, None)) for m in _ENV_METHODS)


def _builds_env(factory: Any) -> bool:
    """Whether ``factory`` is an environment class, or a Python function whose return annotation is one
    (read without calling it)."""
    if _is_env_class(factory):
        return True
    if not inspect.isfunction(factory):
        return False
    try:
        returns = typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 - an annotation that does not resolve proves nothing
        return False
    return _is_env_class(returns)


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """ValueError naming an option the factory's signature does not accept."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in params:
            accepted = ", ".join(p for p in params if p != "self") or "(none)"
            raise ValueError(f"{key}: environment {name!r} takes no option {key!r}; it takes {accepted}")


DEFAULT = Registry()


def register(
    name: str, factory: Callable[..., Env], *, description: str = "", registry: Registry | None = None
) -> None:
    """Register on ``registry`` (the default one when None); see ``Registry.register``."""
    (registry or DEFAULT).register(name, factory, description=description)


def make(name: str, **options: Any) -> Env:
    """Build an environment from the default registry; see ``Registry.make``."""
    return DEFAULT.make(name, **options)


def list_envs() -> list[tuple[str, str]]:
    """``(name, description)`` pairs of the default registry, sorted by name."""
    return DEFAULT.list_envs()
