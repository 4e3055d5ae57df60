"""Nothing a model writes or an environment returns ends a run, and a config's ``env.name`` only builds
environments (docs/reliability.md): each test here failed before its fix."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from scripted import play

from agentrl import registry
from agentrl.chat import ChatFormat
from agentrl.cli import main
from agentrl.env import StepResult, ToolEnv
from agentrl.metrics import read_metrics
from agentrl.models import load_model
from agentrl.registry import make
from agentrl.runner import MAX_ABS_REWARD
from agentrl.textsafety import REPLACEMENT, encodable, encodable_data, safe_str
from agentrl.tools import ToolBox, tool
from agentrl.types import Message, ToolCall

ROOT = Path(__file__).resolve().parent.parent
SURROGATE_CALL = '<tool_call>{"name": "\\ud800", "arguments": {}}</tool_call>'  # plain ASCII


@pytest.fixture(scope="module")
def chat(tiny_model_dir: Path) -> ChatFormat:
    return ChatFormat(load_model(tiny_model_dir)[1])


# ---- 1. text that cannot be encoded ---------------------------------------------------------------


@pytest.mark.parametrize("env", ["graph_nav", "ledger"])
def test_a_lone_surrogate_in_a_tool_name_is_cleaned_not_fatal(chat: ChatFormat, env: str) -> None:
    # The unknown-tool error echoes the name '\ud800'; encoding it raised a TypeError out of the runner.
    result = play(chat, SURROGATE_CALL, lambda: make(env))
    assert result.failures == [] and len(result.episodes) == 2
    for episode in result.episodes:
        assert episode.truncation_reason == "max_turns" and episode.num_tool_errors == 3
        assert episode.info["text_cleaned"] == 3  # one replaced code point per turn's error message
        assert REPLACEMENT in chat.decode(list(episode.sub_traces[0].token_ids))


class Unencodable(ToolEnv):
    """Lone surrogates everywhere an environment hands the runner text."""

    name = "unencodable"
    system_prompt = "System \udfff prompt."

    def setup(self, rng: random.Random, options: dict) -> str:
        return "Task \ud800 text."

    @tool
    def echo(self, text: str) -> str:
        """Echo.

        Args:
            text: what to echo.
        """
        return text

    def on_answer(self, text: str) -> str | None:
        self.finish(1.0, success=True)
        return None

    def step(self, action: str) -> StepResult:
        result = super().step(action)
        return StepResult(result.observation + (Message("user", "obs \udc80"),), result.reward,
                          result.terminated, result.truncated, {**result.info, "note \ud801": "v\ud802"})


def test_every_text_an_environment_gives_is_made_encodable(chat: ChatFormat, tmp_path: Path) -> None:
    from agentrl.episodes import load_episodes, save_episodes

    result = play(chat, "The answer.", Unencodable)
    assert result.failures == [], result.failures
    episode = result.episodes[0]
    assert episode.end == "terminated"
    # system 1, task 1, the last observation 1 (cleaned as it arrives), info key 1 and value 1
    assert episode.info["text_cleaned"] == 5
    assert "note \ufffd" in episode.info
    assert save_episodes(tmp_path / "e.jsonl", result.episodes, decode=chat.decode) == 2  # UTF-8 file
    assert len(load_episodes(tmp_path / "e.jsonl")) == 2


def test_textsafety_leaves_encodable_text_alone() -> None:
    text = "plain text, ünïcode and 😀"
    assert encodable(text) == (text, 0) and encodable(text)[0] is text
    assert encodable("a\ud800b\udfff") == ("a\ufffdb\ufffd", 2)
    data = {"k": ["x", ("\ud800",)], "n": 1}
    assert encodable_data(data) == ({"k": ["x", ("\ufffd",)], "n": 1}, 1)
    assert encodable_data({"k": "fine"})[0] == {"k": "fine"}


# ---- 2. absurd rewards ----------------------------------------------------------------------------


class HugeReward(ToolEnv):
    """Every answer earns a finite but absurd reward."""

    name = "huge_reward"
    system_prompt = "Answer."

    def __init__(self, reward: float = 1e300) -> None:
        super().__init__()
        self.reward = reward

    def setup(self, rng: random.Random, options: dict) -> str:
        return "Say anything."

    def on_answer(self, text: str) -> str | None:
        self.finish(self.reward, success=False)
        return None


def test_a_finite_absurd_reward_is_a_recorded_env_error(chat: ChatFormat) -> None:
    result = play(chat, "Anything.", HugeReward)
    assert result.failures == [] and len(result.episodes) == 2
    for episode in result.episodes:
        assert episode.truncation_reason == "env_error" and episode.reward == 0.0
        assert "outside" in episode.info["env_error"] and "1e+300" in episode.info["env_error"]
    ok = play(chat, "Anything.", lambda: HugeReward(reward=MAX_ABS_REWARD))
    assert all(e.end == "terminated" and e.reward == MAX_ABS_REWARD for e in ok.episodes)


@pytest.mark.parametrize("config", ["ppo_arithmetic.yaml", "grpo_arithmetic.yaml"])
def test_train_survives_a_reward_of_1e300(tmp_path: Path, config: str) -> None:
    # It used to overflow in the metrics and kill the run; now each such episode is an env_error.
    registry.register("huge_reward", HugeReward, description="absurd rewards (tests)")
    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "examples" / config), "--run-dir", str(run), "--quiet"]
    for item in ["env.name=huge_reward", "env.options={}", "run.iterations=1", "ppo.value_pretrain_steps=0",
                 "rollout.tasks_per_iteration=2", "rollout.group_size=2", "rollout.max_concurrent=4"]:
        args += ["--set", item]
    assert main(args) == 0
    record = read_metrics(run)[-1]
    assert record["rollout/truncated_env_error"] == 4 and record["rollout/reward_mean"] == 0.0


# ---- 3. a tool result that cannot become text -----------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class BadError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("not even this")


def test_a_tool_result_whose_str_raises_is_a_tool_error() -> None:
    def odd() -> Any:
        """Returns something with no text."""
        return Unprintable()

    def worse() -> Any:
        """Raises an exception with no text."""
        raise BadError

    for timeout in (None, 2.0):
        box = ToolBox([tool(odd, timeout_s=timeout), tool(worse, timeout_s=timeout)])
        result = box.call(ToolCall("odd", {}))
        assert result.error and "cannot be shown as text" in result.content
        assert "no text for you" in result.content
        raised = box.call(ToolCall("worse", {}))
        assert raised.error and "BadError" in raised.content
    assert safe_str(Unprintable()) == "<unprintable Unprintable>"


class UnprintableTool(ToolEnv):
    name = "unprintable_tool"
    system_prompt = "Call odd."

    def setup(self, rng: random.Random, options: dict) -> str:
        return "Call the odd tool."

    @tool
    def odd(self) -> Any:
        """Returns something with no text."""
        return Unprintable()


def test_an_unprintable_tool_result_keeps_the_episode_going(chat: ChatFormat) -> None:
    result = play(chat, '<tool_call>{"name": "odd", "arguments": {}}</tool_call>', UnprintableTool)
    for episode in result.episodes:  # it used to end at the first turn as env_error
        assert episode.truncation_reason == "max_turns" and episode.num_tool_errors == 3


# ---- 10. configs are code: env.name imports only environments -------------------------------------

CALLS: list[dict[str, Any]] = []


def not_an_env(**options: Any) -> None:
    CALLS.append(options)


def annotated_factory(reward: float = 1.0) -> HugeReward:
    return HugeReward(reward)


def test_an_import_path_must_name_an_environment_before_it_is_called() -> None:
    for name in ("os:system", "subprocess:Popen", "test_reliability_env:not_an_env", "builtins:eval"):
        with pytest.raises(ValueError, match="not an environment class"):
            make(name, command="true")
    assert CALLS == []
    assert isinstance(make("test_reliability_env:HugeReward", reward=2.0), HugeReward)
    assert make("test_reliability_env:annotated_factory", reward=3.0).reward == 3.0
    assert make("agentrl.envs.arithmetic:Arithmetic").name == "arithmetic"


def test_eval_and_train_refuse_os_system(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         tiny_model_dir: Path) -> None:
    marker = tmp_path / "ran"
    assert main(["eval", "--env", "os:system", "--model", str(tiny_model_dir),
                 "--env-option", f"command=touch {marker}", "--out", str(tmp_path / "e.jsonl")]) == 2
    assert "not an environment class" in capsys.readouterr().err
    config = ROOT / "examples" / "grpo_arithmetic.yaml"
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--quiet",
                 "--set", "env.name=os:system", "--set", f"env.options={{command: touch {marker}}}"]) == 2
    assert "not an environment class" in capsys.readouterr().err
    assert not marker.exists()


# ---- the guards' own checks (agentrl.guards) ------------------------------------------------------


def test_the_divergence_guard_names_what_diverged() -> None:
    import torch

    from agentrl.guards import DivergenceError, check_advantages, check_models

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.5)
    check_models([("policy", model)], initial_largest=0.5)  # limit 1000 (the scale is at least 1)
    for bad in (float("nan"), 1001.0):
        with torch.no_grad():
            model.bias[0] = bad
        with pytest.raises(DivergenceError, match="policy diverged: parameter bias"):
            check_models([("policy", model)], initial_largest=0.5)
    check_advantages([torch.tensor([1.0, -3.0]), None])
    for bad in (float("inf"), 1e10):
        with pytest.raises(DivergenceError, match="critic's values diverged"):
            check_advantages([torch.tensor([0.0, bad])])


def test_the_largest_weight_of_a_model_with_a_nan_is_inf() -> None:
    import math

    import torch

    from agentrl.guards import largest_weight

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.25)
        model[0].weight[0, 0] = 3.0
    assert largest_weight(model) == 3.0
    with torch.no_grad():
        model[1].bias[1] = float("nan")  # after the larger weight: max() alone would return 3.0
    assert largest_weight(model) == math.inf
