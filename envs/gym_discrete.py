"""gym, any game: a Gymnasium environment with a discrete action space, played through one ``act`` tool.

``GymDiscreteEnv(game, render=..., expert=..., ...)`` wraps any Gymnasium environment whose action space
is ``Discrete``: ``game`` is a registered id (``"Blackjack-v1"``, ``"CartPole-v1"``, an id your own
package registers) or a function that builds a ``gymnasium.Env``. The toy-text games keep their own
adapter with hand-drawn boards and an exact expert (``envs.gym_adapter``); ``make("gym", game=...)``
picks this one for every other game, or when ``render`` or ``expert`` is given (``make_gym``).

What the model sees of the game's observation is text, from one of:

- ``render``: a function ``render(observation, env) -> str`` (``env`` is the Gymnasium environment), or
  a ``"module:attr"`` string naming one (so a YAML config can give it);
- the game's own text render, when it has one (``"ansi"`` among its ``metadata["render_modes"]``),
  with terminal colour codes removed.

A game with neither is a ValueError when the environment is built, naming ``render``.

The tool: ``act(action)``, where ``action`` is one of ``action_names`` (strings, one per action, e.g.
``["stick", "hit"]``) or, without names, the action's index. Each call steps the game once and answers
with the game's reward, the running return and the rendered observation.

Reward and success: with ``reward: game`` (the default) every step's game reward is that turn's reward,
so the episode's reward is the game's return; with ``reward: success`` the episode's reward is 1 for a
success, else 0. Success is a return above ``success_above`` (default 0: Blackjack's win, FrozenLake's
goal; give CartPole 499). The game's own step limit (Gymnasium's ``TimeLimit``) ends the episode
``truncated``; its end ``terminated``.

A reply without a tool call ends the episode unsuccessfully, as in any ``ToolEnv``; with ``nudge``
(``True`` for the default text, or a text of your own) it is answered with that text as a user message
and the episode goes on (the runner's ``max_turns`` still bounds it).

The expert: ``expert(observation, env) -> int`` (an action index; or ``"module:attr"``), or none
(``expert_action`` returns None: ``check_env(..., require_expert=False)``, and no ``agentrl sft``).
A stochastic game's expert cannot solve every seed: check it with ``check_env(...,
min_expert_success=...)``.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from agentrl.env import ToolEnv
from agentrl.tools import Tool, format_tool_call

GYM_DESCRIPTION = ("Gymnasium games via tools: the toy-text ones on a drawn board, any other with a discrete "
                   "action space through a text render.")
DEFAULT_NUDGE = "Reply with a tool call, act(action=...), to make your move."
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as err:  # optional: say how to get it
        raise ImportError("the gym environment needs gymnasium: pip install 'gymnasium>=1.0' (in a clone of "
                          "agentrl: pip install -e '.[gym]')") from err
    return gymnasium


def _function(value: Any, field: str) -> Callable[..., Any] | None:
    """A callable as is, a ``"module:attr"`` string imported, None as None; ValueError naming ``field``."""
    if value is None or callable(value):
        return value
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{field}: cannot import {value!r} ({e})") from e
        if callable(fn):
            return fn
    raise ValueError(f"{field}: expected a function or a 'module:attr' naming one, got {value!r}")


class GymDiscreteEnv(ToolEnv):
    """Any discrete-action Gymnasium game through an ``act`` tool; see the module docstring."""

    name = "gym"
    description = "Any Gymnasium game with a discrete action space, rendered as text, via one act tool."

    def __init__(
        self,
        game: str | Callable[[], Any] = "Blackjack-v1",
        *,
        render: Callable[[Any, Any], str] | str | None = None,
        expert: Callable[[Any, Any], int] | str | None = None,
        action_names: Sequence[str] | None = None,
        nudge: bool | str = False,
        reward: Literal["game", "success"] = "game",
        success_above: float = 0.0,
        instructions: str = "",
        **game_kwargs: Any,
    ) -> None:
        super().__init__()
        self._render_fn, self._expert_fn = _function(render, "render"), _function(expert, "expert")
        self.label = game if isinstance(game, str) else getattr(game, "__name__", "the game")
        self._game = self._build(game, game_kwargs)
        space = self._game.action_space
        if type(space).__name__ != "Discrete":
            raise ValueError(f"game: {self.label} has the action space {space}; only Discrete is supported")
        self._start, n = int(space.start), int(space.n)
        self.action_names = self._names(action_names, n)
        self.nudge = DEFAULT_NUDGE if nudge is True else (nudge or None)
        if not isinstance(self.nudge, str | None):
            raise ValueError(f"nudge: expected true, false or a text, got {nudge!r}")
        if reward not in ("game", "success"):
            raise ValueError(f"reward: expected 'game' or 'success', got {reward!r}")
        self.reward_mode, self.success_above, self.instructions = reward, float(success_above), instructions
        self.system_prompt = (f"You play {self.label}, one action per call of the act tool. "
                              f"Actions: {self._action_list()}.")
        self._tools = (self._act_tool(),)
        self._obs: Any = None
        self._moves, self._return, self._done = 0, 0.0, True

    # ---- construction --------------------------------------------------------------------------------

    def _build(self, game: str | Callable[[], Any], game_kwargs: dict[str, Any]) -> Any:
        gym = _gymnasium()
        if callable(game):
            if game_kwargs:
                raise ValueError(f"game_kwargs: a game built by a function takes none, got {game_kwargs!r}")
            env = game()
        elif isinstance(game, str) and game in gym.registry:
            try:  # built once to read its render modes (the class's metadata), again in ansi if it has one
                env = gym.make(game, disable_env_checker=True, **game_kwargs)
                if self._render_fn is None and "ansi" in env.metadata.get("render_modes", []):
                    env = gym.make(game, disable_env_checker=True, render_mode="ansi", **game_kwargs)
            except (TypeError, KeyError, ValueError) as err:
                raise ValueError(f"game_kwargs: {game} rejected {game_kwargs!r}: {err}") from err
        else:
            raise ValueError(f"game: expected a registered Gymnasium id or a function that builds an env, "
                             f"got {game!r}")
        if not hasattr(env, "action_space") or not hasattr(env, "step"):
            raise ValueError(f"game: {self.label} did not build a Gymnasium environment")
        if self._render_fn is None and getattr(env, "render_mode", None) != "ansi":
            modes = getattr(env, "metadata", {}).get("render_modes", [])
            raise ValueError(f"render: {self.label} has no text render (its render modes: {modes}); pass "
                             "render=a function (observation, env) -> str, or a 'module:attr' naming one")
        return env

    @staticmethod
    def _names(names: Sequence[str] | None, n: int) -> tuple[str, ...] | None:
        if names is None:
            return None
        if isinstance(names, str) or len(names) != n or not all(isinstance(x, str) and x for x in names) or (
            len(set(names)) != n
        ):
            raise ValueError(f"action_names: expected {n} distinct non-empty names, one per action, "
                             f"got {names!r}")
        return tuple(names)

    def _action_list(self) -> str:
        if self.action_names is None:
            return ", ".join(str(i) for i in range(int(self._game.action_space.n)))
        return ", ".join(self.action_names)

    def _act_tool(self) -> Tool:
        n = int(self._game.action_space.n)
        kind = {"type": "string", "enum": list(self.action_names)} if self.action_names else (
            {"type": "integer", "enum": list(range(n))})
        kind["description"] = f"one of {self._action_list()}"
        parameters = {"type": "object", "properties": {"action": kind}, "required": ["action"],
                      "additionalProperties": False}
        return Tool("act", "Take one action in the game.", parameters, self.act)

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The one ``act`` tool, whose schema lists this game's actions."""
        return self._tools

    # ---- playing -------------------------------------------------------------------------------------

    def setup(self, rng: random.Random, options: dict) -> str:
        """Reset the game from ``rng``; per-episode ``options`` are not supported (use the constructor)."""
        if options:
            raise ValueError(f"options: gym takes its options in the constructor, got {sorted(options)}")
        seed = rng.randrange(2**31)
        self._obs, _ = self._game.reset(seed=seed)
        self._game.action_space.seed(seed)
        self._moves, self._return, self._done = 0, 0.0, False
        extra = f" {self.instructions}" if self.instructions else ""
        return f"Play {self.label}.{extra} Actions: {self._action_list()}.\n{self.observation_text()}"

    def observation_text(self) -> str:
        """The current observation as text (``render``, or the game's own text render)."""
        if self._render_fn is not None:
            text = self._render_fn(self._obs, self._game)
        else:
            text = self._game.render()
        if not isinstance(text, str):
            raise TypeError(f"render: expected a str, got {type(text).__name__}")
        return _ANSI.sub("", text).rstrip()

    def act(self, action: int | str) -> str:
        """Take one action (its name, or its index without names)."""
        index = self.action_names.index(action) if self.action_names else int(action)  # type: ignore[arg-type]
        self._obs, reward, terminated, truncated, _ = self._game.step(self._start + index)
        self._moves += 1
        self._return += float(reward)
        if self.reward_mode == "game":
            self.add_reward(float(reward))
        shown = action if self.action_names else index
        text = f"Action {shown}: reward {float(reward):+g} (return {self._return:+g})."
        if terminated or truncated:
            self._done = True
            success = self._return > self.success_above
            text += " Out of moves: the game stops." if truncated and not terminated else " The game is over."
            text += " You won." if success else ""
            self.finish(1.0 if success and self.reward_mode == "success" else 0.0, success=success,
                        truncated=bool(truncated) and not terminated)
        return f"{text}\n{self.observation_text()}"

    def on_answer(self, text: str) -> str | None:
        """A reply without a tool call: the nudge, if set (the episode goes on); else the episode ends."""
        if self.nudge is not None:
            return self.nudge
        return super().on_answer(text)

    # ---- expert and digest ---------------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """The ``expert`` function's action as an ``act`` call; None without an expert or after the end."""
        if self._expert_fn is None or self._done:
            return None
        index = int(self._expert_fn(self._obs, self._game)) - self._start
        action: int | str = self.action_names[index] if self.action_names else index
        return format_tool_call("act", {"action": action})

    def state_digest(self) -> str:
        """Moves made, the game's return so far and the current observation."""
        return f"Moves made: {self._moves}. Return so far: {self._return:+g}.\n{self.observation_text()}"


def make_gym(game: str | Callable[[], Any] = "FrozenLake-v1", **options: Any) -> ToolEnv:
    """The ``gym`` environment: the toy-text adapter (``envs.gym_adapter``) for FrozenLake, Taxi and
    CliffWalking without ``render`` or ``expert``; ``GymDiscreteEnv`` for every other game."""
    from envs.gym_adapter import FAMILIES, GymTextEnv

    generic = {"render", "expert", "action_names", "reward", "success_above", "instructions"}
    if isinstance(game, str) and game.startswith(FAMILIES) and not generic & set(options):
        return GymTextEnv(game, **options)
    return GymDiscreteEnv(game, **options)
