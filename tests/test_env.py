"""ToolEnv's episode mechanics and check_env's verdicts, on small environments written here."""

import dataclasses
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from agentrl.env import Env, EnvCheckError, StepResult, ToolEnv, check_env, options_hash
from agentrl.tools import format_tool_call, tool
from agentrl.types import Message

STEP_COST = 0.25


class Counter(ToolEnv):
    """Add numbers until the total hits a hidden target; each ``add`` costs ``STEP_COST``."""

    name = "counter"
    system_prompt = "Reach the target with add."
    description = "Add to a counter until it hits a target."

    def setup(self, rng: random.Random, options: dict) -> str:
        self.target = rng.randint(2, 6) + options.get("extra", 0)
        self.total = 0
        self.answers: list[str] = []
        return f"Reach {self.target}."

    @tool(timeout_s=None)
    def add(self, n: int) -> str:
        """Add ``n`` to the total.

        Args:
            n: how much to add.
        """
        self.add_reward(-STEP_COST)
        self.total += n
        if self.total == self.target:
            self.finish(1.0, success=True)
        return f"total={self.total}"

    @tool(timeout_s=None)
    def peek(self) -> str:
        """Say the total so far."""
        return str(self.total)

    def expert_action(self) -> str | None:
        return format_tool_call("add", {"n": 1})

    def state_digest(self) -> str | None:
        return f"total {self.total} of {self.target}"


def add(n: int) -> str:
    return format_tool_call("add", {"n": n})


def started(seed: int = 0, cls: type[Counter] = Counter) -> Counter:
    env = cls()
    env.reset(seed=seed)
    return env


# ---- reset ------------------------------------------------------------------------------------------


def test_reset_gives_the_task_and_a_task_id() -> None:
    env = Counter()
    assert isinstance(env, Env)
    assert env.task_id is None
    task, info = env.reset(seed=7)
    assert info == {"task_id": "counter:7", "seed": 7}
    assert env.task_id == "counter:7"
    assert task == f"Reach {env.target}." and 2 <= env.target <= 6
    assert Counter().reset(seed=7) == (task, info)  # the seed decides the task


def test_options_add_a_stable_hash_to_the_task_id() -> None:
    env = Counter()
    task, info = env.reset(seed=7, options={"extra": 10, "z": "a"})
    assert re.fullmatch(r"counter:7:[0-9a-f]{8}", info["task_id"])
    assert info["task_id"] == f"counter:7:{options_hash({'extra': 10, 'z': 'a'})}"
    assert env.reset(seed=7, options={"z": "a", "extra": 10})[1] == info  # key order does not matter
    assert env.reset(seed=7, options={"extra": 11, "z": "a"})[1]["task_id"] != info["task_id"]
    assert env.reset(seed=7, options={})[1]["task_id"] == "counter:7"  # empty options: no hash
    assert env.target >= 2
    assert options_hash({"f": object}) == options_hash({"f": object})  # not JSON: repr is used


def test_seed_none_draws_a_seed_and_records_it() -> None:
    env = Counter()
    task, info = env.reset(seed=None)
    seed = info["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    assert info["task_id"] == f"counter:{seed}"
    assert Counter().reset(seed=seed) == (task, info)  # the drawn seed reproduces the episode
    seeds = {Counter().reset()[1]["seed"] for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize("seed", [True, 1.0, "1"])
def test_a_bad_seed_or_options_is_a_value_error(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        Counter().reset(seed=seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="options"):
        Counter().reset(seed=0, options=[("extra", 1)])  # type: ignore[arg-type]


def test_reset_reseeds_self_rng() -> None:
    a, b = Counter(), Counter()
    a.reset(seed=3)
    b.reset(seed=3)
    assert a.rng.random() == b.rng.random()


# ---- stepping ---------------------------------------------------------------------------------------


def test_step_before_reset_is_a_runtime_error() -> None:
    env = Counter()
    with pytest.raises(RuntimeError, match=r"step\(\) before reset\(\)"):
        env.step(add(1))
    with pytest.raises(RuntimeError, match="before reset"):
        env.finish(1.0, success=True)
    with pytest.raises(RuntimeError, match="before reset"):
        env.add_reward(-1.0)
    assert (env.num_turns, env.num_tool_calls, env.num_tool_errors) == (0, 0, 0)


def test_a_non_str_action_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="action"):
        started().step(None)  # type: ignore[arg-type]


def test_tool_calls_and_errors_are_counted_per_step_and_per_episode() -> None:
    env = started()
    env.target = 100
    action = "thinking " + add(1) + "<tool_call>nope</tool_call>" + add("x") + format_tool_call("fly", {})
    r = env.step(action)  # type: ignore[arg-type]
    assert r.info == {"tool_calls": 4, "tool_errors": 3, "final_answer": False}
    assert [m.role for m in r.observation] == ["tool"] * 4
    assert r.observation[0].content.startswith("Error: could not parse tool call")  # parse errors first
    assert r.observation[1] == Message("tool", "total=1")
    assert "argument 'n' must be an integer" in r.observation[2].content
    assert "unknown tool 'fly'" in r.observation[3].content and "add, peek" in r.observation[3].content
    assert (r.reward, r.terminated, r.truncated) == (-STEP_COST, False, False)
    r = env.step(add(2) + format_tool_call("peek", {}) + format_tool_call("add", {}))
    assert r.info == {"tool_calls": 3, "tool_errors": 1, "final_answer": False}
    assert r.observation[:2] == (Message("tool", "total=3"), Message("tool", "3"))
    assert r.reward == -STEP_COST  # the reward is per step, not accumulated
    assert (env.num_turns, env.num_tool_calls, env.num_tool_errors) == (2, 7, 4)
    env.reset(seed=0)
    assert (env.num_turns, env.num_tool_calls, env.num_tool_errors) == (0, 0, 0)


def test_step_cost_adds_up_within_a_step() -> None:
    env = started()
    env.target = 100
    assert env.step(add(1) + add(1) + add(1)).reward == -3 * STEP_COST
    assert env.step(format_tool_call("peek", {})).reward == 0.0


def test_finish_from_a_tool_ends_the_episode() -> None:
    env = started()
    r = env.step(add(env.target))
    assert r.terminated and not r.truncated
    assert r.info["success"] is True
    assert r.reward == 1.0 - STEP_COST
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(add(1))
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("a plain answer")


def test_calls_after_finish_in_the_same_turn_are_not_run() -> None:
    env = started()
    r = env.step(add(env.target) + add(1) + format_tool_call("peek", {}))
    assert r.terminated
    assert r.observation[1:] == (
        Message("tool", "Not run: the episode ended before the 'add' call."),
        Message("tool", "Not run: the episode ended before the 'peek' call."),
    )
    assert env.total == env.target  # the second add never ran
    assert r.info["tool_calls"] == 1 and r.reward == 1.0 - STEP_COST


def test_a_final_answer_ends_the_episode_by_default() -> None:
    env = started()
    r = env.step("  I think it is 5.  ")
    assert r == StepResult((), 0.0, True, False, {"tool_calls": 0, "tool_errors": 0, "final_answer": True,
                                                   "success": False})
    assert env.num_turns == 1


class Guess(Counter):
    """Answer the target in plain text; a wrong answer gets a hint and the episode goes on."""

    def on_answer(self, text: str) -> str | None:
        self.answers.append(text)
        if text == str(self.target):
            self.finish(2.0, success=True)
            return None
        if text == "silence":
            return None
        return f"No, not {text}."

    def expert_action(self) -> str | None:
        return str(self.target)


def test_on_answer_can_reply_and_keep_the_episode_going() -> None:
    env = started(cls=Guess)
    r = env.step(" nope ")
    assert r.observation == (Message("user", "No, not nope."),)
    assert not r.terminated and r.info["final_answer"] is True and "success" not in r.info
    assert env.answers == ["nope"]  # the content is stripped
    r = env.step("silence")
    assert r.observation == () and not r.terminated
    r = env.step(str(env.target))
    assert r.terminated and r.reward == 2.0 and r.info["success"] is True


def test_a_turn_with_text_and_calls_is_not_an_answer() -> None:
    env = started(cls=Guess)
    r = env.step(f"{env.target} " + format_tool_call("peek", {}))
    assert not r.terminated and r.info["final_answer"] is False
    assert env.answers == []


def test_finish_and_add_reward_check_their_arguments() -> None:
    env = started()
    with pytest.raises(ValueError, match="reward"):
        env.finish(float("nan"), success=True)
    with pytest.raises(ValueError, match="success"):
        env.finish(1.0, success=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="r:"):
        env.add_reward(float("inf"))
    with pytest.raises(ValueError, match="r:"):
        env.add_reward(True)  # type: ignore[arg-type]
    env.finish(1.0, success=True)
    with pytest.raises(RuntimeError, match="finish"):
        env.finish(1.0, success=True)


class Faulty(Counter):
    """Counter plus a tool that raises and one that hangs past its limit."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    @tool(timeout_s=None)
    def boom(self) -> str:
        """Raise."""
        raise RuntimeError("kaboom")

    @tool(timeout_s=0.2)
    def hang(self) -> str:
        """Block until released."""
        self.release.wait(5)
        return "late"


def test_a_raising_tool_is_an_error_observation_and_the_episode_goes_on() -> None:
    env = started(cls=Faulty)
    r = env.step(format_tool_call("boom", {}))
    assert r.observation == (Message("tool", "Error: tool 'boom' raised RuntimeError: kaboom"),)
    assert not r.terminated and r.info["tool_errors"] == 1
    assert env.step(add(env.target)).info["success"] is True


def test_a_tool_that_times_out_is_an_error_observation_and_the_episode_goes_on() -> None:
    env = started(cls=Faulty)
    try:
        start = time.monotonic()
        r = env.step(format_tool_call("hang", {}))
        assert time.monotonic() - start < 0.2 + 0.5
        assert len(r.observation) == 1 and "timed out" in r.observation[0].content
        assert not r.terminated and r.info == {"tool_calls": 1, "tool_errors": 1, "final_answer": False}
        r = env.step(add(env.target))
        assert r.terminated and r.info["success"] is True
    finally:
        env.release.set()


def test_tools_are_bound_methods_in_definition_order_and_subclasses_override() -> None:
    class NoPeek(Counter):
        def peek(self) -> str:  # overridden without @tool: no longer a tool
            return ""

        @tool(timeout_s=None, name="plus")
        def add(self, n: int) -> str:
            """Add, renamed."""
            return super().add(n)

    assert [t.name for t in Counter().tools] == ["add", "peek"]
    assert [t.name for t in Faulty().tools] == ["add", "peek", "boom", "hang"]
    env = started(cls=NoPeek)
    assert [t.name for t in env.tools] == ["plus"]
    assert env.step(format_tool_call("plus", {"n": 1})).observation == (Message("tool", "total=1"),)
    assert env.tools[0].timeout_s is None and Faulty().tools[3].timeout_s == 0.2


class BadSetup(Counter):
    def setup(self, rng: random.Random, options: dict) -> str:
        super().setup(rng, options)
        return 42  # type: ignore[return-value]


def test_setup_returning_non_str_raises_and_leaves_no_episode() -> None:
    env = BadSetup()
    with pytest.raises(TypeError, match="setup must return the task text"):
        env.reset(seed=0)
    with pytest.raises(RuntimeError):
        env.step(add(1))


def test_setup_must_be_implemented() -> None:
    class Bare(ToolEnv):
        name = "bare"

    with pytest.raises(NotImplementedError, match="Bare must implement setup"):
        Bare().reset(seed=0)


# ---- check_env --------------------------------------------------------------------------------------


def test_check_env_passes_a_good_env_and_restores_global_random() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    check_env(Counter())
    check_env(Guess(), seeds=(5,))
    assert random.random() == expected


class GlobalRandom(Counter):
    def setup(self, rng: random.Random, options: dict) -> str:
        super().setup(rng, options)
        self.target = random.randint(2, 1000)
        return "Reach the target."  # the same text, so only the episodes differ


class GlobalRandomTask(Counter):
    def setup(self, rng: random.Random, options: dict) -> str:
        super().setup(rng, options)
        return f"Reach {random.randint(2, 1000)}."


class GivesUp(Counter):
    def expert_action(self) -> str | None:
        return "I give up."


class CallsUnknown(Counter):
    def expert_action(self) -> str | None:
        return format_tool_call("fly", {"to": "moon"})


class CallsBadly(Counter):
    def expert_action(self) -> str | None:
        return format_tool_call("add", {"n": "one"})


class Unparseable(Counter):
    def expert_action(self) -> str | None:
        return "<tool_call>{oops</tool_call>"


class NeverDone(Counter):
    def expert_action(self) -> str | None:
        return format_tool_call("peek", {})


class NoDocstring(Counter):
    @tool(timeout_s=None)
    def mystery(self) -> str:
        return ""


class EndsOnMalformed(Counter):
    def step(self, action: str) -> StepResult:
        result = super().step(action)
        if result.info["tool_errors"]:
            return dataclasses.replace(result, terminated=True)
        return result


class SilentOnMalformed(Counter):
    def step(self, action: str) -> StepResult:
        result = super().step(action)
        if result.info["tool_errors"]:
            return dataclasses.replace(result, observation=(Message("tool", "hmm"),))
        return result


class NoExpert(Counter):
    def expert_action(self) -> str | None:
        return None


class BadDigest(Counter):
    def state_digest(self) -> str | None:
        return 3  # type: ignore[return-value]


class BadReward(Counter):
    def step(self, action: str) -> StepResult:
        return dataclasses.replace(super().step(action), reward=float("nan"))


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        (GlobalRandom(), r"not deterministic: with seed 0, the expert's step .* differs"),
        (GlobalRandomTask(), r"not deterministic: reset\(seed=0\) gave a different task"),
        (GivesUp(), r"the expert did not solve seed 0: .*info\['success'\]=False"),
        (CallsUnknown(), r"expert_action\(\) after reset\(seed=0\) calls unknown tool 'fly'"),
        (CallsBadly(), r"calls 'add' badly: argument 'n' must be an integer"),
        (Unparseable(), r"expert_action\(\) .* does not parse: Error: could not parse tool call: invalid"),
        (NeverDone(), r"the expert did not finish seed 0 within max_steps=1000"),
        (NoDocstring(), r"tool 'mystery' has no description \(give its function a docstring\)"),
        (BadSetup(), r"reset\(seed=0\) raised TypeError: BadSetup.setup must return the task text"),
        (EndsOnMalformed(), r"step\('<tool_call>not json</tool_call>'\) at seed 0 ended the episode"),
        (SilentOnMalformed(), r"step\('<tool_call>not json</tool_call>'\) at seed 0 gave no error obs"),
        (NoExpert(), r"no expert.*pass require_expert=False"),
        (BadDigest(), r"state_digest\(\) after reset\(seed=0\) must return a str or None, got int"),
        (BadReward(), r"step\(\) at seed 0 step 0: reward must be a finite float, got nan"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, ToolEnv) else "",
)
def test_check_env_names_what_is_broken(env: ToolEnv, pattern: str) -> None:
    with pytest.raises(EnvCheckError, match=pattern):
        check_env(env)


def test_require_expert_false_checks_an_env_without_an_expert() -> None:
    check_env(NoExpert(), require_expert=False)
    with pytest.raises(EnvCheckError, match="gave no error observation"):
        check_env(SilentOnMalformed(), require_expert=False)  # the other checks still run


def test_check_env_rejects_non_envs_and_bad_arguments() -> None:
    with pytest.raises(EnvCheckError, match="does not satisfy the Env protocol; missing .*'step'"):
        check_env(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        check_env(Counter(), max_steps=0)
    with pytest.raises(ValueError, match="seeds"):
        check_env(Counter(), seeds=())


def test_check_env_small_max_steps_is_not_enough_for_the_expert() -> None:
    with pytest.raises(EnvCheckError, match="within max_steps=1"):
        check_env(Counter(), max_steps=1)  # every target is at least 2 adds away


# ---- no torch on the environment side ---------------------------------------------------------------


def test_the_env_side_imports_no_torch() -> None:
    code = (
        "import agentrl.env, agentrl.tools, agentrl.registry, agentrl.envs.graph_nav, agentrl.envs.ledger, "
        "agentrl.envs.arithmetic, agentrl.envs.gym_adapter, sys; assert 'torch' not in sys.modules, "
        "'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
