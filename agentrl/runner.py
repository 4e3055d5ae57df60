"""The episode runner: drives many multi-turn episodes at once through one ``Sampler`` (docs/design.md 2, 5).

An explicit state machine. Every episode in flight is in one phase:

- ``act``: waiting for the model's next action;
- ``summarise``: waiting for the model's summary (the ``policy`` compaction strategy);
- ``done``: ended; its ``Episode`` is built and its environment is free for the next task.

Each round samples once for all episodes in ``summarise`` or ``act`` (one batched ``generate``, each
session with its own token limit), then handles every result. A batch lasts as long as its longest
turn, so a summary longer than ``max_response_tokens`` is sampled in chunks of at most that many tokens,
one per round (the session simply goes on from its last token), and a round never outlasts its longest
action; the chunks make one summary turn in the sub-trace, exactly as one long turn would. Then an
action goes to its environment, whose observation is appended as the chat-template delta
(``ChatFormat.observation_ids``); the sampled tokens are kept exactly as sampled, never re-tokenised.
Episodes start as others end, up to ``max_concurrent`` at a time.

Three budgets, kept apart (``RunnerConfig``):

1. ``max_response_tokens``: one response. A response stopped there is cut (no stop token); it is still
   sent to the environment, and counted in ``info["cut_responses"]``.
2. ``context_budget``: one context window (one sub-trace). When the next maximal response would not fit,
   the episode is compacted (``agentrl.compaction``).
3. The episode caps: ``max_turns``, ``max_total_tokens`` (tokens over all its sub-traces) and
   ``max_compactions``. An episode stopped by one ends ``truncated`` with the cap's name as its reason.

Every cut is recorded on the episode and counted in the metrics; nothing is truncated silently. Other
truncation reasons: ``context_full`` (strategy ``none``, or a resumed window that leaves no room),
``env_truncated`` (the environment's own cap) and ``env_error`` (its ``step`` raised, ran past
``env_timeout_s`` or returned something that is not a ``StepResult``; the message is in
``info["env_error"]``). Every call into an environment goes through ``agentrl.env_calls`` (a time limit;
``sys.exit`` and ``KeyboardInterrupt`` raised inside cost the episode, not the run), and every text it
returns is made encodable and capped at ``max_observation_chars`` before it is tokenised. Each closed
window records why it ended (``SubTrace.end``); ``info["tool_calls"]`` and ``info["tool_errors"]`` are
the episode's totals. A task whose ``reset``
raises, whose first prompt leaves no room for a response, or whose episode ends before its first action
(a cap such as ``max_total_tokens`` leaves no room for one: no policy token to train on) yields no
episode: it is reported in ``RunResult.failures``, enters no GRPO group, and the run goes on.

Token accounting of one sub-trace: ``token_ids`` is exactly the stream the model was given plus what it
sampled; ``loss_mask`` is 1 exactly at sampled tokens (actions, summaries); ``logprobs`` are the sampler's
recorded ones there; a step's reward sits on the last token of the action that earned it. An episode
that ends after an action (done, or stopped by a cap) ends its last sub-trace with that action: the
observation no model turn would read is not appended. A truncated episode keeps the tokens of that
withheld observation in ``Episode.final_observation_ids``, the state it stopped in, which
``ppo.truncation: bootstrap`` values.

This module imports no torch; environments are stepped one after the other in this process (each on
its own worker thread when ``env_timeout_s`` is set, so that a hung call can be abandoned).
"""

from __future__ import annotations

import json
import math
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.chat import ChatFormat
from agentrl.compaction import Turn, resumed_messages, should_compact
from agentrl.env import Env, StepResult
from agentrl.env_calls import EnvCalls
from agentrl.run_result import Failure, RunResult, Task, run_metrics
from agentrl.runner_config import RunnerConfig
from agentrl.sampling import Generation, Sampler, SamplingParams
from agentrl.textsafety import (
    capped,
    capped_messages,
    describe_exception,
    encodable,
    encodable_data,
    encodable_messages,
)
from agentrl.types import Episode, Message, SubTrace

# A step's reward beyond this (finite or not) is an environment error: squared in the metrics' standard
# deviation or summed over a group, such a value overflows a float, and no task is scored on that scale.
MAX_ABS_REWARD = 1e6

@dataclass
class _Window:
    """The sub-trace being built: its token stream, its sampler session and the turns it shows."""

    session: int
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float | None]
    rewards: list[float]
    turns: list[Turn]
    summary_start: int | None = None  # where the policy's summary closing this window begins
    end: str | None = None  # why the window ended (SubTrace.end), set when it closes

    @classmethod
    def open(cls, sampler: Sampler, ids: Sequence[int], turns: Sequence[Turn]) -> _Window:
        n = len(ids)
        return cls(sampler.open(ids), list(ids), [0] * n, [None] * n, [0.0] * n, list(turns))

    def add_context(self, sampler: Sampler, ids: Sequence[int]) -> None:
        sampler.append(self.session, ids)
        self.token_ids += ids
        self.loss_mask += [0] * len(ids)
        self.logprobs += [None] * len(ids)
        self.rewards += [0.0] * len(ids)

    def add_sampled(self, gen: Generation) -> None:
        self.token_ids += gen.token_ids
        self.loss_mask += [1] * len(gen.token_ids)
        self.logprobs += gen.logprobs
        self.rewards += [0.0] * len(gen.token_ids)

    def sub_trace(self) -> SubTrace:
        return SubTrace(self.token_ids, self.loss_mask, self.logprobs, self.rewards, self.summary_start,
                        self.end)


@dataclass
class _Run:
    """One episode in flight."""

    index: int
    task: Task
    env: Env
    task_id: str
    task_text: str
    system: str
    tools: list[dict[str, Any]]
    window: _Window | None = None
    phase: str = "act"
    closed: list[SubTrace] = field(default_factory=list)
    last: Generation | None = None
    partial_summary: Generation | None = None  # the chunks of a summary sampled so far
    summary_saw_observation: bool = True
    num_turns: int = 0
    num_tool_calls: int = 0
    num_tool_errors: int = 0
    cut_responses: int = 0
    cut_summaries: int = 0
    end: str | None = None
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    withheld: tuple[int, ...] = ()  # an observation a cap kept from the model: final_observation_ids

    @property
    def num_compactions(self) -> int:
        return len(self.closed)

    def tokens_so_far(self) -> int:
        return sum(s.num_tokens for s in self.closed) + (len(self.window.token_ids) if self.window else 0)


def _cleaned(run: _Run, text: str) -> str:
    """``text`` made encodable (``agentrl.textsafety``), counted in ``info["text_cleaned"]``."""
    text, n = encodable(text)
    if n:
        run.info["text_cleaned"] = run.info.get("text_cleaned", 0) + n
    return text


def _count(info: Any, key: str) -> int:
    """A step's ``info[key]`` count (missing: 0); ValueError for one that is not an int >= 0."""
    if not isinstance(info, Mapping):
        raise ValueError(f"step returned info of type {type(info).__name__}, not a dict")
    value = info.get(key, 0) or 0
    try:
        count = operator.index(value)  # an int, or an int-like such as numpy's
    except TypeError:
        count = -1
    if isinstance(value, bool) or count < 0:
        raise ValueError(f"step returned info[{key!r}] = {value!r:.60}, not an int >= 0")
    return count


def _json_safe(info: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable entries of an environment's info dict."""
    safe = {}
    for key, value in info.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        safe[str(key)] = value
    return safe


class Runner:
    """Runs episodes of one environment kind with one sampler; see the module docstring.

    Args:
        sampler: the backend; its sessions are opened and closed here, one per sub-trace.
        chat: the chat format of the sampler's model (its tokenizer and template).
        config: budgets and sampling settings.
    """

    def __init__(self, sampler: Sampler, chat: ChatFormat, config: RunnerConfig) -> None:
        self.sampler = sampler
        self.chat = chat
        self.config = config
        self._reserve = self._summary_reserve()
        self._calls = EnvCalls(config.env_timeout_s)

    # ---- the loop ---------------------------------------------------------------------------------------

    def run(
        self,
        make_env: Callable[[], Env],
        tasks: Sequence[Task],
        *,
        seed: int | None = None,
        teacher: bool = False,
        on_episode: Callable[[int, Episode], None] | None = None,
    ) -> RunResult:
        """Run every task to its end; ``make_env`` builds an environment when no free one is left.

        ``seed`` seeds the sampling draws (None: fresh ones). Environments are reused across tasks (each
        task resets one), so about ``max_concurrent`` are built; one whose ``reset`` or ``step`` raised
        is dropped and replaced.

        ``teacher=True`` plays the environments' experts instead of the model, through exactly the same
        token stream, budgets and compaction: an action is ``expert_action()``, a ``policy`` summary is
        ``state_digest()``, each encoded and closed with the stop token, with log-prob 0 (they were not
        sampled). The sampler is not used. An episode whose expert has no action (None) ends truncated
        with reason ``no_expert``. The episodes are demonstrations for a supervised warm start.

        ``on_episode(task_index, episode)`` is called as each episode finishes, so that a caller can keep
        the finished ones of a run that never returns (a rollout worker whose environment hangs).
        """
        runner = Runner(NoSampler(), self.chat, self.config) if teacher else self
        runner._calls = EnvCalls(self.config.env_timeout_s)  # every call into an env: agentrl.env_calls
        try:
            return runner._loop(make_env, tasks, seed, teacher=teacher, on_episode=on_episode)
        finally:
            runner._calls.close()

    def _loop(
        self, make_env: Callable[[], Env], tasks: Sequence[Task], seed: int | None, *, teacher: bool,
        on_episode: Callable[[int, Episode], None] | None = None,
    ) -> RunResult:
        cfg = self.config
        rng = random.Random(seed)
        queue = deque(enumerate(tasks))
        free: list[Env] = []
        active: list[_Run] = []
        done: dict[int, Episode] = {}
        failures: list[Failure] = []
        start = time.perf_counter()
        sampled_tokens = 0
        while queue or active:
            while queue and len(active) < cfg.max_concurrent:
                index, task = queue.popleft()
                env = free.pop() if free else self._build(make_env, task)
                run = env if isinstance(env, Failure) else self._start(index, task, env)
                if isinstance(run, Failure):
                    failures.append(run)
                    if not run.env_broken:  # a reset that raised may have left its env broken
                        free.append(env)  # type: ignore[arg-type]
                    elif not isinstance(env, Failure):
                        self._calls.drop(env)
                else:
                    active.append(run)
            # one batch for actions and summaries alike, each with its own token limit
            batch = [r for r in active if r.phase in ("summarise", "act")]
            seed = rng.randrange(2**31)
            params = [self._params(r, seed, chunked=not teacher) for r in batch]
            assert all(r.window is not None for r in batch)
            if teacher:
                gens: list[Generation | None] = [
                    self._teach(r, p) for r, p in zip(batch, params, strict=True)
                ]
            elif batch:
                gens = list(self.sampler.generate([r.window.session for r in batch], params))  # type: ignore[union-attr]
            else:
                gens = []
            for run, gen in zip(batch, gens, strict=True):
                if gen is None:
                    self._end(run, "truncated", "env_error" if "env_error" in run.info else "no_expert")
                    continue
                sampled_tokens += len(gen.token_ids)
                self._on_generation(run, gen)
            for run in [r for r in active if r.phase == "done"]:
                active.remove(run)
                episode = self._episode(run)
                if episode.num_policy_tokens == 0:  # nothing to train on: a failed task, in no GRPO group
                    failures.append(Failure(run.task, f"no policy token: the episode ended ({run.reason}) "
                                                      "before its first action"))
                else:
                    done[run.index] = episode
                    if on_episode is not None:
                        on_episode(run.index, episode)
                if run.reason != "env_error":  # an env that crashed or hung is not reused
                    free.append(run.env)
                else:
                    self._calls.drop(run.env)
        episodes = [done[i] for i in sorted(done)]
        metrics = run_metrics(episodes, failures, sampled_tokens, time.perf_counter() - start)
        return RunResult(episodes, failures, metrics)

    def _build(self, make_env: Callable[[], Env], task: Task) -> Env | Failure:
        """A new environment, or the task's ``Failure`` when building one raised or hung. A ValueError is
        a bad option or name (``agentrl.registry.make``): a config error, which stops the run."""
        try:
            return self._calls.call(None, "building the environment", make_env)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - an env that cannot be built costs its task, not the run
            return Failure(task, f"building the environment raised {describe_exception(e)}", env_broken=True)

    def _params(self, run: _Run, seed: int, *, chunked: bool) -> SamplingParams:
        """The run's sampling params: an action's, or the next chunk of a summary (at most an action's
        length when ``chunked``, so that no round lasts longer than its longest action)."""
        cfg = self.config
        limit = cfg.max_response_tokens
        if run.phase == "summarise":
            so_far = len(run.partial_summary.token_ids) if run.partial_summary else 0
            limit = cfg.compaction.max_summary_tokens - so_far
            limit = min(limit, cfg.max_response_tokens) if chunked else limit
        return SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=limit,
            stop_token_ids=self.chat.stop_token_ids,
            seed=seed,
        )

    def _teach(self, run: _Run, params: SamplingParams) -> Generation | None:
        """The expert's action (or, summarising, the state digest) as a generation; None: no action."""
        env = run.env
        try:
            text = self._calls.call(env, "expert_action()", env.expert_action) if run.phase == "act" else (
                self._calls.call(env, "state_digest()", env.state_digest) or "")
        except Exception as e:  # noqa: BLE001 - a broken expert ends its episode, not the run
            run.info["env_error"] = describe_exception(e)
            return None
        if not isinstance(text, str):
            return None
        text = _cleaned(run, text)
        ids = [*self.chat.encode(text), self.chat.im_end_id]
        cut = len(ids) > params.max_new_tokens
        ids = ids[: params.max_new_tokens]
        return Generation(tuple(ids), (0.0,) * len(ids), "length" if cut else "stop")

    # ---- phases -----------------------------------------------------------------------------------------

    def _summary_reserve(self) -> int:
        """Room kept free in every window for the summary turn (``policy`` only; module docstring)."""
        c = self.config.compaction
        if c.strategy != "policy":
            return 0
        request = self.chat.observation_ids([Message("user", c.summary_request)], sampled_ids=[])
        return len(request) + c.max_summary_tokens

    def _fits(self, context_tokens: int) -> bool:
        cfg = self.config
        return not should_compact(
            context_tokens,
            max_response_tokens=cfg.max_response_tokens,
            context_budget=cfg.context_budget,
            reserve=self._reserve,
        )

    def _start(self, index: int, task: Task, env: Env) -> _Run | Failure:
        def reset() -> tuple[str, list[dict[str, Any]], str, str]:
            task_text, info = env.reset(seed=task.seed, options=dict(task.options or {}))
            task_id = str(info.get("task_id", f"{getattr(env, 'name', 'env')}:{task.seed}"))
            return task_text, [t.schema() for t in env.tools], env.system_prompt, task_id

        try:
            task_text, tools, system, task_id = self._calls.call(env, "reset()", reset)
            (task_text, system, tools, task_id), cleaned = encodable_data((task_text, system, tools, task_id))
            task_text, cut = capped(task_text, self.config.observation_char_cap)
        except Exception as e:  # noqa: BLE001 - a broken environment costs its task, not the run
            return Failure(task, f"reset raised {describe_exception(e)}", env_broken=True)
        prompt = self.chat.prompt_ids(system, tools, task_text)
        if not self._fits(len(prompt)):
            return Failure(
                task,
                f"the prompt has {len(prompt)} tokens and leaves no room for a response of "
                f"{self.config.max_response_tokens} in context_budget={self.config.context_budget}"
                + (f" with {self._reserve} kept for the summary turn (policy compaction: its request "
                   "and max_summary_tokens)" if self._reserve else ""),
            )
        run = _Run(index, task, env, task_id, task_text, system, tools)
        if cleaned:
            run.info["text_cleaned"] = cleaned
        if cut:
            run.info["observation_chars_cut"] = cut
        run.window = _Window.open(self.sampler, prompt, [])
        self._check_caps(run)
        return run

    def _on_generation(self, run: _Run, gen: Generation) -> None:
        window = run.window
        assert window is not None
        if run.phase == "summarise":
            if run.partial_summary is not None:  # a later chunk: the session continued the same turn
                first = run.partial_summary
                gen = Generation(first.token_ids + gen.token_ids, first.logprobs + gen.logprobs,
                                 gen.finish_reason)
            limit = self.config.compaction.max_summary_tokens
            if gen.finish_reason == "length" and len(gen.token_ids) < limit:
                run.partial_summary = gen  # sampled in chunks; the next round goes on
                return
            run.partial_summary = None
            window.summary_start = len(window.token_ids)
        window.add_sampled(gen)
        run.last = gen
        if run.phase == "summarise":
            run.cut_summaries += gen.finish_reason == "length"
            summary = self.chat.action_text(gen.token_ids)
            self._resume(run, summary, keep_latest=not run.summary_saw_observation)
            return
        run.cut_responses += gen.finish_reason == "length"
        action = self.chat.action_text(gen.token_ids)
        env = run.env
        try:
            result = self._calls.call(env, "step()", lambda: env.step(action))
            if not isinstance(result, StepResult):
                raise TypeError(f"step returned {type(result).__name__}, not a StepResult")
            reward = float(result.reward)
            if not math.isfinite(reward):
                raise ValueError(f"step returned a non-finite reward {result.reward!r}")
            if abs(reward) > MAX_ABS_REWARD:
                raise ValueError(f"step returned a reward {reward:g} outside +-{MAX_ABS_REWARD:g}")
            if not all(isinstance(m, Message) and m.role in ("tool", "user") for m in result.observation):
                raise ValueError("step returned an observation that is not tool or user messages")
            calls, errors = _count(result.info, "tool_calls"), _count(result.info, "tool_errors")
            observation, cleaned = encodable_messages(tuple(result.observation))
            observation, cut = capped_messages(observation, self.config.observation_char_cap)
        except Exception as e:  # noqa: BLE001 - an environment that crashes ends its episode, not the run
            run.num_turns += 1
            run.info["env_error"] = describe_exception(e)
            self._end(run, "truncated", "env_error")
            return
        run.num_turns += 1
        window.rewards[-1] += reward - self.config.tool_error_penalty * errors
        run.num_tool_calls += calls
        run.num_tool_errors += errors
        run.info.update(_json_safe(result.info))
        # the env reports one step's counts; the episode's record holds the whole episode's
        run.info.update(tool_calls=run.num_tool_calls, tool_errors=run.num_tool_errors)
        for key, n in (("text_cleaned", cleaned), ("observation_chars_cut", cut)):
            if n:
                run.info[key] = run.info.get(key, 0) + n
        window.turns.append(Turn(action, observation))
        if result.terminated:
            self._end(run, "terminated", None)
        elif result.truncated:
            delta = self.chat.observation_ids(observation, sampled_ids=gen.token_ids)
            self._withhold(run, delta, "env_truncated")
        else:
            self._observe(run, observation)

    def _observe(self, run: _Run, observation: tuple[Message, ...]) -> None:
        """Append the observation for the next action, or compact first when the window is full."""
        window, last = run.window, run.last
        assert window is not None and last is not None
        delta = self.chat.observation_ids(observation, sampled_ids=last.token_ids)
        reason = self._cap_reason(run, pending=len(delta))
        if reason is not None:  # no action follows: the observation is never shown, so it is withheld
            self._withhold(run, delta, reason)
            return
        if self._fits(len(window.token_ids) + len(delta)):
            window.add_context(self.sampler, delta)
            run.phase = "act"
            return
        strategy = self.config.compaction.strategy
        if strategy == "none":
            self._withhold(run, delta, "context_full")
        elif run.num_compactions >= self.config.max_compactions:
            self._withhold(run, delta, "max_compactions")
        elif strategy == "policy":
            self._ask_summary(run, observation)
        else:
            summary = self._digest(run) if strategy == "env" else None
            self._resume(run, summary, keep_latest=False)

    def _withhold(self, run: _Run, delta: Sequence[int], reason: str) -> None:
        """End the episode before its observation is shown: the tokens go to the episode's
        ``final_observation_ids`` (the state it stopped in), not into a sub-trace."""
        run.withheld = tuple(delta)
        self._end(run, "truncated", reason)

    def _ask_summary(self, run: _Run, observation: tuple[Message, ...]) -> None:
        """Ask the policy for its summary, after the observation if that fits, else right after the action."""
        window, last, c = run.window, run.last, self.config.compaction
        assert window is not None and last is not None
        request = Message("user", c.summary_request)
        delta = self.chat.observation_ids((*observation, request), sampled_ids=last.token_ids)
        run.summary_saw_observation = True
        if len(window.token_ids) + len(delta) + c.max_summary_tokens > self.config.context_budget:
            delta = self.chat.observation_ids((request,), sampled_ids=last.token_ids)
            run.summary_saw_observation = False
        window.add_context(self.sampler, delta)
        run.phase = "summarise"

    def _digest(self, run: _Run) -> str | None:
        try:
            digest = self._calls.call(run.env, "state_digest()", run.env.state_digest)
        except Exception as e:  # noqa: BLE001 - a broken digest means no summary, recorded
            run.info["digest_error"] = describe_exception(e)
            return None
        return _cleaned(run, digest) if isinstance(digest, str) else None

    def _resume(self, run: _Run, summary: str | None, *, keep_latest: bool) -> None:
        """Close the window and open the next from task, summary and the last turns (module docstring)."""
        window = run.window
        assert window is not None
        k = self.config.compaction.keep_last_turns
        k = max(k, 1) if keep_latest else k
        turns = window.turns[-k:] if k else []
        self._close(run, "compaction")
        while True:
            messages = resumed_messages(run.task_text, summary, turns)
            ids = self.chat.context_ids(run.system, run.tools, messages)
            if self._fits(len(ids)):
                break
            if not turns or (keep_latest and len(turns) == 1):
                self._end(run, "truncated", "context_full")
                return
            turns = turns[1:]
        run.window = _Window.open(self.sampler, ids, turns)
        run.phase = "act"
        self._check_caps(run)

    def _cap_reason(self, run: _Run, *, pending: int = 0) -> str | None:
        """The episode cap that stops its next action, with ``pending`` tokens still to append, or None."""
        cfg = self.config
        if run.num_turns >= cfg.max_turns:
            return "max_turns"
        if cfg.max_total_tokens is not None and (
            run.tokens_so_far() + pending + cfg.max_response_tokens > cfg.max_total_tokens
        ):
            return "max_total_tokens"
        return None

    def _check_caps(self, run: _Run) -> None:
        """End the episode if a cap stops its next action; otherwise it waits for the model."""
        reason = self._cap_reason(run)
        if reason is not None:
            self._end(run, "truncated", reason)
        else:
            run.phase = "act"

    def _close(self, run: _Run, why: str) -> None:
        """Close the open window (if any), recording why it ended (``SubTrace.end``)."""
        if run.window is not None:
            self.sampler.close(run.window.session)
            run.window.end = why
            run.closed.append(run.window.sub_trace())
            run.window = None

    def _end(self, run: _Run, end: str, reason: str | None) -> None:
        self._close(run, reason or end)
        run.end, run.reason, run.phase = end, reason, "done"

    def _episode(self, run: _Run) -> Episode:
        info, cleaned = encodable_data(dict(run.info))  # env_error messages may echo a model's text
        if cleaned:
            info["text_cleaned"] = info.get("text_cleaned", 0) + cleaned
        info.update(
            success=bool(run.info.get("success", False)),
            cut_responses=run.cut_responses,
            cut_summaries=run.cut_summaries,
            compaction=self.config.compaction.strategy,
            seed=run.task.seed,
        )
        return Episode(
            sub_traces=tuple(run.closed),
            task_id=run.task_id,
            group_id=run.task.group_id,
            end=run.end,  # type: ignore[arg-type]
            truncation_reason=run.reason,
            num_turns=run.num_turns,
            num_tool_errors=run.num_tool_errors,
            info=info,
            final_observation_ids=run.withheld if run.end == "truncated" else (),
        )


class NoSampler:
    """Sessions without a model, for teacher mode: ``open`` numbers them, nothing is ever encoded."""

    def __init__(self) -> None:
        self._next = 0

    def open(self, prompt_ids: Sequence[int]) -> int:
        self._next += 1
        return self._next

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        pass

    def generate(
        self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        raise RuntimeError("teacher mode never samples")

    def close(self, session: int) -> None:
        pass
