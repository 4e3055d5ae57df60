"""Any discrete-action Gymnasium game through ``envs.gym_discrete`` (issue 19, item 12), and ``check_env``
with a stated minimum expert success for stochastic games (item 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

gymnasium = pytest.importorskip("gymnasium")  # in the dev extra, so CI always has it

from agentrl.chat import ChatFormat  # noqa: E402
from agentrl.env import EnvCheckError, check_env  # noqa: E402
from agentrl.models import load_model  # noqa: E402
from agentrl.registry import make  # noqa: E402
from agentrl.runner import Runner, RunnerConfig, Task  # noqa: E402
from agentrl.tools import format_tool_call  # noqa: E402
from envs.gym_adapter import GymTextEnv  # noqa: E402
from envs.gym_discrete import DEFAULT_NUDGE, GymDiscreteEnv  # noqa: E402


def blackjack_text(observation: Any, env: Any) -> str:
    """Blackjack's observation (player sum, dealer's card, usable ace) as a sentence."""
    total, dealer, ace = observation
    return f"Your hand is {int(total)}{' with a usable ace' if ace else ''}; the dealer shows {int(dealer)}."


def stick_on_17(observation: Any, env: Any) -> int:
    """Blackjack's classic dealer rule: hit below 17, else stick (0 stick, 1 hit)."""
    return 0 if observation[0] >= 17 else 1


def cartpole_text(observation: Any, env: Any) -> str:
    x, v, angle, spin = (float(o) for o in observation)
    return f"cart at {x:+.2f} moving {v:+.2f}; pole at {angle:+.3f} rad turning {spin:+.2f}"


def blackjack(**options: Any) -> GymDiscreteEnv:
    return GymDiscreteEnv("Blackjack-v1", render=blackjack_text, action_names=["stick", "hit"], **options)


def act(action: Any) -> str:
    return format_tool_call("act", {"action": action})


# ---- item 12: any discrete game, with or without an expert ------------------------------------------


def test_blackjack_with_a_render_function_and_an_expert_plays_through_act() -> None:
    env = blackjack(expert=stick_on_17)
    task, info = env.reset(seed=3)
    assert "Play Blackjack-v1. Actions: stick, hit." in task and "Your hand is" in task
    assert [t.name for t in env.tools] == ["act"]
    schema = env.tools[0].parameters["properties"]["action"]
    assert schema["type"] == "string" and schema["enum"] == ["stick", "hit"]
    wrong = env.step(act("double"))
    assert wrong.info["tool_errors"] == 1 and not wrong.terminated  # a bad action is a tool error
    steps = 0
    while True:
        result = env.step(env.expert_action())  # type: ignore[arg-type]
        steps += 1
        if result.terminated or result.truncated:
            break
    assert "The game is over." in result.observation[0].content
    assert result.reward in (-1.0, 0.0, 1.0, 1.5) and result.info["success"] == (result.reward > 0)
    assert env.expert_action() is None


def test_a_stochastic_game_passes_check_env_with_a_stated_minimum_success() -> None:
    env = blackjack(expert=stick_on_17)
    seeds = range(40)
    with pytest.raises(EnvCheckError, match="the expert did not solve seed"):
        check_env(env, seeds=seeds)  # before: no way for Blackjack to pass
    with pytest.raises(EnvCheckError, match=r"solved \d+ of 40 seeds .* below min_expert_success=0.9"):
        check_env(env, seeds=seeds, min_expert_success=0.9)
    check_env(env, seeds=seeds, min_expert_success=0.3)  # the rule wins about 40% of hands
    with pytest.raises(ValueError, match="min_expert_success"):
        check_env(env, min_expert_success=1.5)


def test_slippery_frozen_lake_passes_with_a_minimum_success() -> None:
    env = GymTextEnv("FrozenLake-v1", is_slippery=True)
    with pytest.raises(EnvCheckError, match="did not solve"):
        check_env(env, seeds=range(20))
    check_env(env, seeds=range(20), min_expert_success=0.5)


def test_a_game_without_an_expert_and_with_its_own_text_render() -> None:
    # FrozenLake with expert=None goes the generic way only if asked: here through action_names.
    env = GymDiscreteEnv("FrozenLake-v1", action_names=["left", "down", "right", "up"], is_slippery=False)
    task, _ = env.reset(seed=0)
    assert "SFFF" in task and "\x1b[" not in task  # the game's ansi render, colour codes removed
    assert env.expert_action() is None
    check_env(env, seeds=(0, 1), require_expert=False)
    result = env.step(act("right"))
    assert "Action right: reward +0 (return +0)." in result.observation[0].content


def test_cartpole_by_index_with_the_game_return_as_reward() -> None:
    env = make("gym", game="CartPole-v1", render="test_env_gym_discrete:cartpole_text", success_above=499)
    assert isinstance(env, GymDiscreteEnv)
    schema = env.tools[0].parameters["properties"]["action"]
    assert schema["type"] == "integer" and schema["enum"] == [0, 1]
    env.reset(seed=1)
    total, result = 0.0, None
    for _ in range(600):
        result = env.step(act(0))  # always push left: the pole falls within a few dozen steps
        total += result.reward
        if result.terminated or result.truncated:
            break
    assert result is not None and result.terminated and result.info["success"] is False
    assert 1 <= total < 100  # every step's +1 is that turn's reward
    check_env(env, seeds=(0,), require_expert=False)


def test_a_game_that_is_not_discrete_or_has_no_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^game: Pendulum-v1 has the action space Box"):
        GymDiscreteEnv("Pendulum-v1", render=cartpole_text)
    with pytest.raises(ValueError, match=r"^render: Blackjack-v1 has no text render"):
        GymDiscreteEnv("Blackjack-v1")
    with pytest.raises(ValueError, match=r"^render: cannot import"):
        GymDiscreteEnv("Blackjack-v1", render="no_such_module:f")
    with pytest.raises(ValueError, match=r"^action_names: expected 2 distinct"):
        GymDiscreteEnv("Blackjack-v1", render=blackjack_text, action_names=["stick"])
    with pytest.raises(ValueError, match=r"^game: expected a registered Gymnasium id"):
        GymDiscreteEnv("NoSuchGame-v0", render=blackjack_text)


def test_a_game_built_by_a_function() -> None:
    env = GymDiscreteEnv(lambda: gymnasium.make("Blackjack-v1"), render=blackjack_text)
    task, _ = env.reset(seed=0)
    assert "Actions: 0, 1." in task


def test_the_toy_text_games_keep_their_adapter() -> None:
    assert isinstance(make("gym", game="Taxi-v3" if "Taxi-v3" in gymnasium.registry else "Taxi-v4"),
                      GymTextEnv)
    assert isinstance(make("gym", game="FrozenLake-v1", render=blackjack_text), GymDiscreteEnv)


# ---- the prose-reply nudge ------------------------------------------------------------------------


def frozen_lake(**options: Any) -> GymTextEnv:
    return GymTextEnv("FrozenLake-v1", **options)


@pytest.mark.parametrize("make_env", [blackjack, frozen_lake], ids=["discrete", "toy_text"])
def test_a_prose_reply_ends_the_episode_or_gets_a_nudge(make_env: Any) -> None:
    env = make_env()
    env.reset(seed=0)
    assert env.step("I think I will wait.").terminated
    nudged = make_env(nudge=True)
    nudged.reset(seed=0)
    result = nudged.step("I think I will wait.")
    assert not (result.terminated or result.truncated) and result.observation[-1].role == "user"
    assert result.observation[-1].content.startswith("Reply with a tool call")
    custom = make_env(nudge="Use the tools.")
    custom.reset(seed=0)
    assert custom.step("Hmm.").observation[-1].content == "Use the tools."
    with pytest.raises(ValueError, match="^nudge:"):
        make_env(nudge=3)
    assert DEFAULT_NUDGE.startswith("Reply with a tool call")


def test_blackjack_through_the_runner_in_teacher_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    chat = ChatFormat(load_model(tiny_model_dir)[1])
    runner = Runner(None, chat, RunnerConfig(max_turns=8, context_budget=1024))  # type: ignore[arg-type]
    result = runner.run(lambda: blackjack(expert=stick_on_17), [Task(s, f"g{s}") for s in range(6)],
                        teacher=True)
    assert result.failures == [] and len(result.episodes) == 6
    for episode in result.episodes:
        assert episode.end == "terminated" and episode.sub_traces[-1].end == "terminated"
        assert episode.info["tool_calls"] == episode.num_turns and episode.info["tool_errors"] == 0
        text = chat.decode(list(episode.sub_traces[0].token_ids))
        assert "Your hand is" in text and text.count('<tool_call>\n{"name": "act"') == episode.num_turns
    json.dumps([e.to_dict() for e in result.episodes])  # a record like any other
