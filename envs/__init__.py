"""Built-in environments, written only against agentrl's public environment and tool API."""

from agentrl.registry import register


def register_builtin() -> None:
    """Entry point of the ``agentrl.envs`` group: register the built-in environments."""
    from envs.arithmetic import Arithmetic
    from envs.graph_nav import GraphNav
    from envs.gym_adapter import GymTextEnv
    from envs.ledger import Ledger

    for cls in (GraphNav, Ledger, Arithmetic, GymTextEnv):
        register(cls.name, cls, description=cls.description)
