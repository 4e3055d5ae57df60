"""Built-in environments, written only against agentrl's public environment and tool API."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrl.registry import Registry


def register_builtin(registry: Registry | None = None) -> None:
    """Entry point of the ``agentrl.envs`` group: register the built-in environments."""
    from agentrl.registry import register
    from envs.arithmetic import Arithmetic
    from envs.code_fix import CodeFix
    from envs.graph_nav import GraphNav
    from envs.gym_discrete import GYM_DESCRIPTION, make_gym
    from envs.ledger import Ledger

    for cls in (GraphNav, Ledger, Arithmetic, CodeFix):
        register(cls.name, cls, description=cls.description, registry=registry)
    register("gym", make_gym, description=GYM_DESCRIPTION, registry=registry)
