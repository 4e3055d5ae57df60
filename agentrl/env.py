"""The environment API: the ``Env`` protocol the runner relies on, ``ToolEnv`` to subclass, ``check_env``.

Gymnasium-shaped (DESIGN.md section 4) with text in and out: ``reset(*, seed, options)`` returns the
task text (the first user message) and an info dict with a ``task_id``; ``step(action)`` takes the
model's whole assistant text for one turn and returns a ``StepResult`` whose observation is the messages
appended to the conversation (tool results and/or a user message). Two optional hooks:
``expert_action()`` (an oracle's next assistant text, for demos, tests and a supervised warm start) and
``state_digest()`` (a text summary of progress that the ``env`` compaction strategy can use).

``ToolEnv`` is the base class for tool-using tasks. A subclass sets ``name``, ``system_prompt`` and
``description``, decorates methods with ``@tool``, builds its hidden state in
``setup(rng, options) -> task text`` from the ``random.Random`` it is given (never from global random
state), and ends the episode by calling ``self.finish(reward, success=...)`` from a tool or from
``on_answer`` (a turn with no tool call is a final answer). A turn with both text and tool calls runs the
calls; its text is thought. Every model mistake becomes an error observation and the episode goes on;
env programming errors (stepping after the end, ``setup`` returning a non-str) raise.

``check_env`` verifies an environment the way Gymnasium's checker does; see its docstring.

This module imports no torch.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from agentrl.tools import (
    Tool,
    ToolBox,
    argument_problems,
    as_tool,
    parse_tool_calls,
    schema_problems,
    tool_spec,
)
from agentrl.types import Message

MALFORMED_ACTION = "<tool_call>not json</tool_call>"


@dataclass(frozen=True)
class StepResult:
    """What one ``step`` returns (Gymnasium's five-tuple, as a record).

    Attributes:
        observation: the messages appended to the conversation after the action: one ``tool`` message
            per tool call (and per malformed call), and/or a ``user`` message.
        reward: this step's reward (step costs plus, on the last step, the finish reward).
        terminated: the environment ended the episode (nothing to bootstrap).
        truncated: the environment cut the episode short (a cap of its own).
        info: free-form facts; ``ToolEnv`` fills ``tool_calls``, ``tool_errors``, ``final_answer`` and,
            once finished, ``success``.
    """

    observation: tuple[Message, ...]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    """What the runner relies on. ``ToolEnv`` implements it; any object with these members works."""

    name: str
    system_prompt: str

    @property
    def tools(self) -> Sequence[Tool]:
        """The tools the model may call (empty for single-turn tasks)."""
        ...

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start an episode; return the task text and an info dict with ``"task_id"``."""
        ...

    def step(self, action: str) -> StepResult:
        """Apply the model's full assistant text for one turn."""
        ...

    def expert_action(self) -> str | None:
        """The oracle's next assistant text for the current state, or None without an expert."""
        ...

    def state_digest(self) -> str | None:
        """A text summary of progress for the ``env`` compaction strategy, or None."""
        ...


@dataclass
class _EpisodeState:
    """ToolEnv's per-episode bookkeeping (kept in one place so subclasses' attributes cannot clash)."""

    task_id: str
    active: bool = True
    finished: bool = False
    truncated: bool = False
    success: bool = False
    step_reward: float = 0.0
    num_turns: int = 0
    num_tool_calls: int = 0
    num_tool_errors: int = 0


def _finite(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{argument}: expected a finite number, got {value!r}")
    return float(value)


def options_hash(options: Mapping[str, Any]) -> str:
    """A short stable hash of an options dict (sorted JSON; ``repr`` for values JSON cannot write)."""
    text = json.dumps(dict(options), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class ToolEnv:
    """Base class for tool-using environments; see the module docstring for what a subclass writes.

    Class attributes: ``name`` (registry and task-id prefix), ``system_prompt``, ``description`` (one
    line for ``agentrl envs``). Methods marked ``@tool`` are bound to the instance as its tools.
    Per-episode counters ``num_turns``, ``num_tool_calls`` and ``num_tool_errors`` are reset by ``reset``.
    """

    name: ClassVar[str] = "tool_env"
    system_prompt: str = ""
    description: ClassVar[str] = ""
    # Private (name-mangled) so a subclass's own attributes never clash; class-level defaults keep a
    # subclass that forgets super().__init__() working.
    __tools: tuple[Tool, ...] | None = None
    __box: ToolBox | None = None
    __ep: _EpisodeState | None = None

    def __init__(self) -> None:
        self.rng: random.Random = random.Random(0)  # reseeded by reset; for tools that draw at random

    # ---- to override --------------------------------------------------------------------------------

    def setup(self, rng: random.Random, options: dict) -> str:
        """Build the hidden state of a new episode from ``rng`` and ``options``; return the task text."""
        raise NotImplementedError(f"{type(self).__name__} must implement setup(rng, options)")

    def on_answer(self, text: str) -> str | None:
        """Handle a final answer (a turn without tool calls). Default: end with reward 0, no success.

        An override calls ``self.finish`` to end the episode, or returns a str to send back as a user
        message (the episode goes on); returning None without finishing sends nothing back.
        """
        self.finish(0.0, success=False)
        return None

    def expert_action(self) -> str | None:
        """The oracle's next assistant text (tool calls via ``format_tool_call``); None: no expert."""
        return None

    def state_digest(self) -> str | None:
        """A text summary of progress for the ``env`` compaction strategy; None: no digest."""
        return None

    # ---- called by subclasses -----------------------------------------------------------------------

    def finish(self, reward: float, *, success: bool, truncated: bool = False) -> None:
        """End the episode after this step with ``reward`` added to the step's reward.

        ``truncated=True`` says the environment's own cap (a move limit) stopped it, not a true end: the
        step then reports ``truncated`` rather than ``terminated``, so a critic can bootstrap.
        """
        ep = self._episode("finish")
        if ep.finished:
            raise RuntimeError(f"{self.name}: finish() called twice in one episode")
        if not isinstance(success, bool):
            raise ValueError(f"success: expected a bool, got {success!r}")
        ep.step_reward += _finite(reward, "reward")
        if not isinstance(truncated, bool):
            raise ValueError(f"truncated: expected a bool, got {truncated!r}")
        ep.finished, ep.success, ep.truncated = True, success, truncated

    def add_reward(self, r: float) -> None:
        """Add ``r`` (e.g. a negative step cost) to this step's reward."""
        self._episode("add_reward").step_reward += _finite(r, "r")

    # ---- the Env protocol ---------------------------------------------------------------------------

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The ``@tool`` methods of this class, bound to this instance, in definition order."""
        if self.__tools is None:
            self.__tools = self._collect_tools()
        return self.__tools

    def _collect_tools(self) -> tuple[Tool, ...]:
        seen: dict[str, None] = {}  # an ordered set of the names that are tools
        for cls in reversed(type(self).__mro__):  # base classes first; a subclass overrides by name
            for attr, value in vars(cls).items():
                if tool_spec(value) is not None:
                    seen[attr] = None
                elif attr in seen:  # overridden without @tool: no longer a tool
                    del seen[attr]
        # bind only once the most derived definition of each name is known (a marked one)
        return tuple(as_tool(getattr(self, attr)) for attr in seen)

    @property
    def task_id(self) -> str | None:
        """The current episode's task id (None before the first reset)."""
        return None if self.__ep is None else self.__ep.task_id

    @property
    def num_turns(self) -> int:
        return 0 if self.__ep is None else self.__ep.num_turns

    @property
    def num_tool_calls(self) -> int:
        return 0 if self.__ep is None else self.__ep.num_tool_calls

    @property
    def num_tool_errors(self) -> int:
        return 0 if self.__ep is None else self.__ep.num_tool_errors

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start an episode: seed ``random.Random(seed)``, reset the counters, call ``setup``.

        ``seed=None`` draws a fresh seed from ``random.SystemRandom`` (recorded in the task id). The
        task id is ``f"{name}:{seed}"``, plus ``:`` and a hash of ``options`` when there are any.
        """
        if seed is None:
            seed = random.SystemRandom().randrange(2**63)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an int or None, got {seed!r}")
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"options: expected a dict or None, got {type(options).__name__}")
        options = dict(options or {})
        task_id = f"{self.name}:{seed}" + (f":{options_hash(options)}" if options else "")
        self._box()  # build the tools now, so a bad @tool fails at reset, not at the first call
        self.__ep = _EpisodeState(task_id=task_id, active=False)  # not steppable until setup succeeds
        self.rng = random.Random(seed)
        task = self.setup(self.rng, options)
        if not isinstance(task, str):
            raise TypeError(f"{type(self).__name__}.setup must return the task text (str), got {type(task)}")
        self.__ep.active = True
        return task, {"task_id": task_id, "seed": seed}

    def step(self, action: str) -> StepResult:
        """Run the turn's tool calls (or treat it as a final answer) and report the result.

        One ``tool`` message per call and per malformed block; calls after one that finished the
        episode are not run. Raises RuntimeError when no episode is running (before ``reset`` or after
        the end): that is a programming error, not a model error.
        """
        ep = self._episode("step")
        if not ep.active or ep.finished:
            raise RuntimeError(f"{self.name}: step() after the episode ended; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"action: expected the assistant text (str), got {type(action).__name__}")
        ep.step_reward, ep.num_turns = 0.0, ep.num_turns + 1
        parsed = parse_tool_calls(action)
        observation = [Message("tool", e) for e in parsed.errors]
        errors = calls = len(parsed.errors)  # a malformed block is an attempted call that failed
        for call in parsed.calls:
            if ep.finished:
                skipped = f"Not run: the episode ended before the '{call.name}' call."
                observation.append(Message("tool", skipped))
                continue
            result = self._box().call(call)
            calls += 1
            errors += result.error
            observation.append(Message("tool", result.content))
        if parsed.is_final_answer:
            reply = self.on_answer(parsed.content)
            if reply is not None:
                observation.append(Message("user", str(reply)))
        ep.num_tool_calls += calls
        ep.num_tool_errors += errors
        info: dict[str, Any] = {"tool_calls": calls, "tool_errors": errors}
        info["final_answer"] = parsed.is_final_answer
        if ep.finished:
            info["success"] = ep.success
            ep.active = False
        ended = ep.finished
        return StepResult(
            tuple(observation), ep.step_reward, ended and not ep.truncated, ended and ep.truncated, info
        )

    def _box(self) -> ToolBox:
        if self.__box is None:
            self.__box = ToolBox(self.tools)
        return self.__box

    def _episode(self, caller: str) -> _EpisodeState:
        if self.__ep is None:
            raise RuntimeError(f"{self.name}: {caller}() before reset()")
        return self.__ep


# ---- check_env --------------------------------------------------------------------------------------


class EnvCheckError(ValueError):
    """Raised by ``check_env``; the message names the environment and the problem."""


@dataclass(frozen=True)
class _Turn:
    """One expert step as check_env saw it, for comparing two runs of one seed."""

    action: str
    observation: tuple[Message, ...]
    reward: float
    terminated: bool
    truncated: bool
    solved: bool = False  # the step ended the episode with info["success"] True


def _call(where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an env method; anything it raises becomes an EnvCheckError naming the call."""
    try:
        return fn(*args, **kwargs)
    except EnvCheckError:
        raise
    except Exception as e:
        raise EnvCheckError(f"{where} raised {type(e).__name__}: {e}") from e


def _check_protocol(env: Any) -> None:
    if not isinstance(env, Env):
        missing = [m for m in ("name", "system_prompt", "tools", "reset", "step", "expert_action",
                               "state_digest") if not hasattr(env, m)]
        raise EnvCheckError(f"{type(env).__name__} does not satisfy the Env protocol; missing {missing}")
    if not isinstance(env.name, str) or not env.name:
        raise EnvCheckError(f"name: expected a non-empty str, got {env.name!r}")
    if not isinstance(env.system_prompt, str):
        raise EnvCheckError(f"system_prompt: expected a str, got {type(env.system_prompt).__name__}")


def _signature_problems(t: Tool) -> list[str]:
    """Where a tool's schema and its function's signature disagree."""
    try:
        params = inspect.signature(t.fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to compare
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    props = t.parameters.get("properties", {})
    problems = [f"schema property {k!r} is not a parameter of its function" for k in props if k not in params]
    problems += [
        f"parameter {p.name!r} has no default but is not a required schema property"
        for p in params.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in t.parameters.get("required", [])
    ]
    return problems


def _check_tools(env: Env) -> dict[str, Tool]:
    tools = _call("tools", getattr, env, "tools")
    if not isinstance(tools, Sequence) or isinstance(tools, str):
        raise EnvCheckError(f"tools: expected a sequence of Tool, got {type(tools).__name__}")
    by_name: dict[str, Tool] = {}
    for i, t in enumerate(tools):
        if not isinstance(t, Tool):
            raise EnvCheckError(f"tools[{i}]: expected a Tool, got {type(t).__name__}")
        if t.name in by_name:
            raise EnvCheckError(f"tools: duplicate tool name {t.name!r}")
        problems = schema_problems(t.parameters) or _signature_problems(t)
        if problems:
            raise EnvCheckError(f"tool {t.name!r} has a bad schema: {'; '.join(problems)}")
        if not t.description.strip():
            raise EnvCheckError(f"tool {t.name!r} has no description (give its function a docstring)")
        by_name[t.name] = t
    return by_name


def _check_step(result: Any, where: str) -> StepResult:
    if not isinstance(result, StepResult):
        raise EnvCheckError(f"{where}: expected a StepResult, got {type(result).__name__}")
    obs = result.observation
    if not isinstance(obs, tuple) or not all(isinstance(m, Message) for m in obs):
        raise EnvCheckError(f"{where}: observation must be a tuple of Message")
    r = result.reward
    if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r):
        raise EnvCheckError(f"{where}: reward must be a finite float, got {r!r}")
    for flag in ("terminated", "truncated"):
        if not isinstance(getattr(result, flag), bool):
            raise EnvCheckError(f"{where}: {flag} must be a bool, got {getattr(result, flag)!r}")
    if not isinstance(result.info, dict):
        raise EnvCheckError(f"{where}: info must be a dict, got {type(result.info).__name__}")
    return result


def _check_hooks(env: Env, where: str, tools: dict[str, Tool]) -> str | None:
    """Check ``state_digest`` and ``expert_action`` at the current state; return the expert's action."""
    digest = _call(f"state_digest() {where}", env.state_digest)
    if digest is not None and not isinstance(digest, str):
        raise EnvCheckError(f"state_digest() {where} must return a str or None, got {type(digest).__name__}")
    action = _call(f"expert_action() {where}", env.expert_action)
    if action is None:
        return None
    if not isinstance(action, str):
        raise EnvCheckError(f"expert_action() {where} must return a str or None, got {type(action).__name__}")
    if tools:
        parsed = parse_tool_calls(action)
        if parsed.errors:
            raise EnvCheckError(f"expert_action() {where} does not parse: {parsed.errors[0]}")
        for call in parsed.calls:
            if call.name not in tools:
                raise EnvCheckError(f"expert_action() {where} calls unknown tool {call.name!r}")
            problems = argument_problems(tools[call.name].parameters, call.arguments)
            if problems:
                detail = "; ".join(problems)
                raise EnvCheckError(f"expert_action() {where} calls {call.name!r} badly: {detail}")
    return action


def _reset(env: Env, seed: int) -> tuple[str, dict]:
    out = _call(f"reset(seed={seed})", env.reset, seed=seed)
    shape_ok = isinstance(out, tuple) and len(out) == 2
    if not (shape_ok and isinstance(out[0], str) and isinstance(out[1], dict)):
        raise EnvCheckError(f"reset(seed={seed}) must return (task text: str, info: dict), got {out!r:.200}")
    if not isinstance(out[1].get("task_id"), str):
        raise EnvCheckError(f"reset(seed={seed}) info must hold 'task_id' (a str), got {out[1]!r:.200}")
    return out


def _play_expert(
    env: Env, seed: int, max_steps: int, tools: dict[str, Tool], start: int = 0, *, must_solve: bool = True
) -> list[_Turn]:
    """Step the expert's actions from the current state to the end; check types and, with
    ``must_solve``, success (else an unsolved episode ends with a turn whose ``solved`` is False)."""
    turns: list[_Turn] = []
    for k in range(start, max_steps):
        where = f"at seed {seed} step {k}"
        action = _check_hooks(env, where, tools)
        if action is None:
            raise EnvCheckError(f"expert_action() returned None {where} before the episode ended")
        result = _check_step(_call(f"step() {where}", env.step, action), f"step() {where}")
        reward = float(result.reward)
        solved = result.info.get("success") is True
        turns.append(_Turn(action, result.observation, reward, result.terminated, result.truncated, solved))
        if result.terminated or result.truncated:
            if not solved and must_solve:
                raise EnvCheckError(
                    f"the expert did not solve seed {seed}: the episode ended at step {k} with "
                    f"info['success']={result.info.get('success')!r}"
                )
            _check_hooks(env, f"after the end of seed {seed}", tools)
            return turns
    raise EnvCheckError(f"the expert did not finish seed {seed} within max_steps={max_steps}")


def _check_step_after_end(env: Env, seed: int) -> None:
    try:
        env.step("done")
    except RuntimeError:
        return
    except Exception as e:
        raise EnvCheckError(
            f"step() after the end of seed {seed} raised {type(e).__name__}, not RuntimeError"
        ) from e
    raise EnvCheckError(f"step() after the end of seed {seed} must raise RuntimeError")


def _compare(seed: int, first: list[_Turn], second: list[_Turn]) -> None:
    for k, (a, b) in enumerate(zip(first, second, strict=False)):
        for part in ("action", "observation", "reward", "terminated", "truncated"):
            if getattr(a, part) != getattr(b, part):
                raise EnvCheckError(
                    f"not deterministic: with seed {seed}, the expert's step {k} {part} differs between two "
                    "runs (use only the rng given to setup, never global random state)"
                )
    if len(first) != len(second):
        lengths = f"{len(first)} and {len(second)} steps"
        raise EnvCheckError(f"not deterministic: with seed {seed}, two runs gave episodes of {lengths}")


def _check_malformed(
    env: Env, seed: int, max_steps: int, tools: dict[str, Tool], expert: bool, must_solve: bool = True
) -> None:
    """A malformed action and an unknown tool give error observations; the episode goes on."""
    _reset(env, seed)
    bad_actions = (MALFORMED_ACTION, '<tool_call>{"name": "__no_such_tool__", "arguments": {}}</tool_call>')
    for action in bad_actions:
        where = f"step({action!r}) at seed {seed}"
        result = _check_step(_call(where, env.step, action), where)
        if result.terminated or result.truncated:
            raise EnvCheckError(f"{where} ended the episode; a malformed call must not")
        if not any("error" in m.content.lower() for m in result.observation):
            raise EnvCheckError(f"{where} gave no error observation, got {result.observation!r:.200}")
        if not isinstance(result.info.get("tool_errors"), int) or result.info["tool_errors"] < 1:
            raise EnvCheckError(f"{where} must count the error in info['tool_errors']")
    if expert:
        _play_expert(env, seed, max_steps + len(bad_actions), tools, start=len(bad_actions),
                     must_solve=must_solve)


def _check_success(solved: Sequence[int], seeds: Sequence[int], minimum: float) -> None:
    """Raise unless the expert solved at least ``minimum`` of the seeds."""
    rate = len(solved) / len(seeds)
    if rate < minimum:
        failed = [s for s in seeds if s not in solved]
        raise EnvCheckError(
            f"the expert solved {len(solved)} of {len(seeds)} seeds ({rate:.2f}), below "
            f"min_expert_success={minimum:g}; unsolved seeds: {', '.join(map(str, failed[:20]))}"
        )


def check_env(
    env: Env,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    max_steps: int = 1000,
    require_expert: bool = True,
    min_expert_success: float = 1.0,
) -> None:
    """Check ``env`` the way Gymnasium's checker does; raise ``EnvCheckError`` naming the problem.

    Checks: it satisfies the ``Env`` protocol; every tool is a ``Tool`` with a unique name, a
    description, and a valid schema of the supported kind that matches its function's signature;
    ``reset`` returns ``(str, dict with "task_id")``; ``step`` returns a ``StepResult`` of the right
    types; ``state_digest`` returns str or None and ``expert_action`` str or None, its tool calls parsing
    into known tools with valid arguments; for each seed, the expert solves the task within
    ``max_steps`` (``info["success"] is True``) and a second run (with the global random state
    disturbed in between) gives the same task, actions, observations and rewards; stepping after the end
    raises RuntimeError; and, for envs with tools, a malformed call and an unknown tool give an error
    observation counted in ``info["tool_errors"]`` without ending the episode, after which the expert
    still solves it. With ``require_expert=False`` an env whose expert returns None at the start skips
    the expert checks (the determinism check then covers ``reset`` only).

    A stochastic environment (slippery FrozenLake, Blackjack) has no expert that solves every seed:
    ``min_expert_success`` is the fraction of ``seeds`` its expert must solve (default 1.0: every
    one). Below 1, an episode the expert plays to an unsuccessful end is counted rather than an error,
    but each must still end within ``max_steps`` and replay identically from its seed; pass enough seeds
    for the fraction to mean something.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
    m = min_expert_success
    if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m <= 1:
        raise ValueError(f"min_expert_success: expected a number in [0, 1], got {m!r}")
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    _check_protocol(env)
    tools = _check_tools(env)
    has_expert, must_solve, solved = True, min_expert_success >= 1, []
    saved = random.getstate()
    try:
        for seed in seeds:
            runs = []
            for attempt in range(2):
                random.seed(1_000_003 * attempt + seed)  # an env leaning on global random state diverges
                task, info = _reset(env, seed)
                has_expert = _check_hooks(env, f"after reset(seed={seed})", tools) is not None
                if not has_expert and require_expert:
                    raise EnvCheckError("expert_action() returned None after reset (no expert); "
                                        "pass require_expert=False to check an env without one")
                turns = _play_expert(env, seed, max_steps, tools, must_solve=must_solve) if has_expert else []
                if has_expert:
                    _check_step_after_end(env, seed)
                runs.append((task, info["task_id"], turns))
            if runs[0][:2] != runs[1][:2]:
                raise EnvCheckError(f"not deterministic: reset(seed={seed}) gave a different task or task_id")
            _compare(seed, runs[0][2], runs[1][2])
            if runs[0][2] and runs[0][2][-1].solved:
                solved.append(seed)
    finally:
        random.setstate(saved)
    if has_expert and not must_solve:
        _check_success(solved, seeds, min_expert_success)
    if tools:
        _check_malformed(env, seeds[0], max_steps, tools, has_expert, must_solve)
