"""The environment registry: registering, building by name or import path, and the built-in entry points."""

import random

import pytest

from agentrl import registry
from agentrl.env import Env, ToolEnv, check_env
from agentrl.registry import Registry, register
from envs.arithmetic import Arithmetic
from envs.graph_nav import GraphNav
from envs.gym_discrete import GYM_DESCRIPTION, make_gym
from envs.ledger import Ledger


class Echo(ToolEnv):
    """Answer anything; the episode ends."""

    name = "echo"
    system_prompt = "Say something."

    def __init__(self, size: str = "small", *, loud: bool = False) -> None:
        super().__init__()
        self.size, self.loud = size, loud

    def setup(self, rng: random.Random, options: dict) -> str:
        return "Say something."


def fresh() -> Registry:
    return Registry(load_entry_points=False)


def test_register_make_and_list() -> None:
    r = fresh()
    assert r.list_envs() == []
    r.register("zeta", Echo, description="  The last\n one,   spaced oddly. ")
    r.register("alpha", lambda: Echo("large"))
    assert r.list_envs() == [("alpha", ""), ("zeta", "The last one, spaced oddly.")]
    env = r.make("zeta", size="large", loud=True)
    assert isinstance(env, Echo) and isinstance(env, Env)
    assert (env.size, env.loud) == ("large", True)
    assert r.make("alpha").size == "large"
    assert r.spec("zeta").factory is Echo


def test_registering_the_same_factory_twice_is_fine_a_different_one_is_not() -> None:
    r = fresh()
    r.register("echo", Echo, description="first")
    r.register("echo", Echo, description="second")
    assert r.list_envs() == [("echo", "second")]
    with pytest.raises(ValueError, match="'echo' is already registered"):
        r.register("echo", lambda: Echo())
    assert r.spec("echo").factory is Echo


@pytest.mark.parametrize("name", ["", "Echo", "1echo", "echo-2", "echo env", "_echo", "echo:x", None, 3])
def test_bad_names_are_rejected(name: object) -> None:
    r = fresh()
    with pytest.raises(ValueError, match="^name: expected lower-case"):
        r.register(name, Echo)  # type: ignore[arg-type]
    assert r.list_envs() == []


def test_a_factory_must_be_callable() -> None:
    with pytest.raises(ValueError, match="^factory: environment 'echo' needs a callable, got str"):
        fresh().register("echo", "Echo")  # type: ignore[arg-type]


def test_an_unknown_name_lists_the_known_ones() -> None:
    r = fresh()
    with pytest.raises(ValueError, match=r"unknown environment 'nope'; known: \(none\)$"):
        r.make("nope")
    r.register("beta", Echo)
    r.register("alpha", Echo)
    with pytest.raises(ValueError, match=r"unknown environment 'nope'; known: alpha, beta$"):
        r.make("nope")
    with pytest.raises(ValueError, match="known: alpha, beta"):
        r.spec("nope")


def test_an_unknown_option_is_named() -> None:
    r = fresh()
    r.register("echo", Echo)
    message = r"^colour: environment 'echo' takes no option 'colour'; it takes size, loud$"
    with pytest.raises(ValueError, match=message):
        r.make("echo", colour="red")
    r.register("bare", lambda: Echo())
    with pytest.raises(ValueError, match=r"takes no option 'size'; it takes \(none\)$"):
        r.make("bare", size="small")


def test_a_factory_with_kwargs_takes_any_option() -> None:
    r = fresh()
    r.register("loose", lambda **options: Echo(**options))
    assert r.make("loose", loud=True).loud is True
    with pytest.raises(TypeError):  # the factory itself rejects it; the registry lets it through
        r.make("loose", colour="red")


def test_a_factory_that_does_not_build_an_env_is_rejected() -> None:
    r = fresh()
    r.register("nothing", lambda: object())  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="'nothing' built a object, which is not an Env"):
        r.make("nothing")


def test_an_import_path_builds_an_unregistered_env() -> None:
    r = fresh()
    env = r.make("envs.arithmetic:Arithmetic")
    assert isinstance(env, Arithmetic)
    assert r.list_envs() == []  # nothing was registered
    env = r.make(f"{__name__}:Echo", size="large")  # this module, under the name pytest gave it
    assert isinstance(env, Echo) and env.size == "large"
    with pytest.raises(ValueError, match="takes no option 'colour'"):
        r.make(f"{__name__}:Echo", colour="red")


@pytest.mark.parametrize("name", ["no_such_module_xyz:Env", "envs.arithmetic:NoSuchClass"])
def test_a_bad_import_path_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"cannot import '{name}'"):
        fresh().make(name)


def test_module_level_register_targets_the_given_registry() -> None:
    r = fresh()
    register("echo", Echo, description="mine", registry=r)
    assert r.list_envs() == [("echo", "mine")]
    assert "echo" not in dict(registry.list_envs())  # the default registry is untouched


BUILTIN = {"graph_nav": GraphNav, "ledger": Ledger, "arithmetic": Arithmetic}


def test_entry_points_register_the_builtin_envs() -> None:
    r = Registry()  # loads the agentrl.envs entry points on first lookup
    listed = dict(r.list_envs())
    assert set(BUILTIN) <= set(listed)
    for name, cls in BUILTIN.items():
        assert r.spec(name).factory is cls
        assert listed[name] == cls.description and listed[name]
    assert r.spec("gym").factory is make_gym and listed["gym"] == GYM_DESCRIPTION  # GymTextEnv and others
    assert [n for n, _ in r.list_envs()] == sorted(listed)


def test_the_default_registry_lists_and_makes_the_builtins() -> None:
    assert set(BUILTIN) <= set(dict(registry.list_envs()))
    env = registry.make("arithmetic")
    assert isinstance(env, Arithmetic)
    check_env(env, seeds=(0,))
    with pytest.raises(ValueError, match="known: .*arithmetic.*graph_nav.*gym.*ledger"):
        registry.make("no_such_env")
