"""The episode runner on real runs: a tiny random Qwen2 sampled at temperature 1 through ``TorchSampler``.

A recording proxy around the sampler logs every ``open``/``append``/``generate``/``close``, and a wrapper
around each environment logs every step, so each sub-trace can be rebuilt token by token from what the
sampler was given and what it sampled, and compared with what the runner returned. ``test_compaction``
imports the helpers and the cached runs from here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrl import registry
from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.env import Env, StepResult, ToolEnv
from agentrl.episodes import load_episodes, policy_segments, save_episodes
from agentrl.models import load_model
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunnerConfig, RunResult, Task
from agentrl.sampling import Generation, SamplingParams, per_session
from agentrl.tools import format_tool_call, tool
from agentrl.types import SubTrace

STRATEGIES = ("policy", "env", "keep_last", "none")
WORDS = ("apples", "rivers", "lamps", "stones", "clouds", "maps", "bells", "ropes")


# ---- helpers shared with test_compaction ------------------------------------------------------------


class Chatter(ToolEnv):
    """Never ends on a final answer: every answer earns ``0.125 * answers`` and gets "Go on." back, so
    episodes run to the runner's caps. Options switch on failure modes: ``reset_raises``,
    ``step_raises_at`` (a turn), ``truncate_after`` (answers, then ``finish(truncated=True)``) and
    ``task_words`` (the task's length)."""

    name = "chatter"
    system_prompt = "Talk. Write notes with the note tool."
    description = "Endless chat for runner tests."

    def setup(self, rng: random.Random, options: dict) -> str:
        if options.get("reset_raises"):
            raise RuntimeError("reset exploded on purpose")
        self.options = options
        self.answers = 0
        self.notes: list[str] = []
        words = [rng.choice(WORDS) for _ in range(options.get("task_words", 5))]
        return "Keep talking about " + " ".join(words) + "."

    @tool
    def note(self, text: str) -> str:
        """Write a note.

        Args:
            text: what to note.
        """
        self.notes.append(text)
        return f"Noted ({len(self.notes)})."

    def on_answer(self, text: str) -> str | None:
        self.answers += 1
        self.add_reward(0.125 * self.answers)  # distinct per step, exact in binary
        if self.answers == self.options.get("truncate_after"):
            self.finish(0.0, success=False, truncated=True)
            return None
        return "Go on."

    def step(self, action: str) -> StepResult:
        if self.options.get("step_raises_at") == self.num_turns + 1:
            raise RuntimeError(f"step exploded at turn {self.num_turns + 1}")
        return super().step(action)

    def state_digest(self) -> str:
        return f"Answers so far: {self.answers}; notes: {len(self.notes)}."


Log = list[tuple[str, StepResult, "str | None"]]  # (action, result, state digest after the step)


class Recorded:
    """Wraps an environment and logs every step of every task (by task id)."""

    def __init__(self, env: Env, logs: dict[str, Log]) -> None:
        self.env, self.logs, self.log = env, logs, []
        self.name, self.system_prompt = env.name, env.system_prompt

    @property
    def tools(self) -> Sequence[Any]:
        return self.env.tools

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        task, info = self.env.reset(seed=seed, options=options)
        assert info["task_id"] not in self.logs, "a task id ran twice"
        self.log = self.logs[info["task_id"]] = []
        return task, info

    def step(self, action: str) -> StepResult:
        result = self.env.step(action)
        self.log.append((action, result, self.env.state_digest()))
        return result

    def expert_action(self) -> str | None:
        return self.env.expert_action()

    def state_digest(self) -> str | None:
        return self.env.state_digest()


@dataclass
class Session:
    """What one sampler session was given and gave back, in order."""

    prompt: list[int]
    # ("append", ids) or ("gen", (generation, context tokens before it, params))
    events: list[tuple[str, Any]] = field(default_factory=list)
    closed: bool = False

    def stream(self) -> list[int]:
        ids = list(self.prompt)
        for kind, value in self.events:
            ids += value if kind == "append" else value[0].token_ids
        return ids

    def gens(self) -> Iterator[tuple[int, Generation, int, SamplingParams]]:
        """(event index, generation, context tokens before it, params) of every generate."""
        for i, (kind, value) in enumerate(self.events):
            if kind == "gen":
                yield i, *value


class RecordingSampler:
    """Implements the Sampler protocol around a real sampler and records every call."""

    def __init__(self, inner: TorchSampler) -> None:
        self.inner = inner
        self.sessions: dict[int, Session] = {}
        self.batches: list[list[int]] = []
        self.params: list[list[SamplingParams]] = []  # per call, one per session
        self.max_open = 0

    def open(self, prompt_ids: Sequence[int]) -> int:
        sid = self.inner.open(prompt_ids)
        self.sessions[sid] = Session(list(prompt_ids))
        self.max_open = max(self.max_open, sum(not s.closed for s in self.sessions.values()))
        return sid

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        self.inner.append(session, token_ids)
        self.sessions[session].events.append(("append", list(token_ids)))

    def generate(
        self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        contexts = [len(self.sessions[s].stream()) for s in sessions]
        gens = self.inner.generate(sessions, params)
        self.batches.append(list(sessions))
        self.params.append(per_session(params, len(sessions)))
        for s, gen, ctx, p in zip(sessions, gens, contexts, self.params[-1], strict=True):
            self.sessions[s].events.append(("gen", (gen, ctx, p)))
        return gens

    def close(self, session: int) -> None:
        self.inner.close(session)
        self.sessions[session].closed = True


@dataclass
class Recording:
    """One recorded run: its result, what the sampler saw, the environments' step logs, and the setup."""

    result: RunResult
    sampler: RecordingSampler
    logs: dict[str, Log]
    config: RunnerConfig
    tiny: Tiny
    envs_made: int

    def session_of(self, sub_trace: SubTrace) -> Session:
        """The one sampler session whose stream is exactly this sub-trace's token ids."""
        matches = [s for s in self.sampler.sessions.values() if s.stream() == list(sub_trace.token_ids)]
        assert len(matches) == 1, f"{len(matches)} sampler sessions match a sub-trace"
        return matches[0]


@dataclass(frozen=True)
class Tiny:
    """The tiny random model and its chat format."""

    model: Any
    chat: ChatFormat

    def record(
        self, config: RunnerConfig, make_env: Callable[[], Env], tasks: Sequence[Task], *, seed: int = 0
    ) -> Recording:
        """Run ``tasks`` through a Runner on a fresh recording TorchSampler."""
        logs: dict[str, Log] = {}
        made: list[Recorded] = []

        def make() -> Recorded:
            made.append(Recorded(make_env(), logs))
            return made[-1]

        sampler = RecordingSampler(TorchSampler(self.model))
        result = Runner(sampler, self.chat, config).run(make, tasks, seed=seed)
        return Recording(result, sampler, logs, config, self, len(made))


def load_tiny(model_dir: Path) -> Tiny:
    model, tokenizer = load_model(model_dir)
    return Tiny(model.eval(), ChatFormat(tokenizer))


def strategy_config(strategy: str, **overrides: Any) -> RunnerConfig:
    """Small budgets that make the Chatter compact several times (max_summary_tokens != the response's,
    so a summary's generate is told apart by its params)."""
    compaction = CompactionConfig(strategy, keep_last_turns=2, max_summary_tokens=20)
    values: dict[str, Any] = dict(
        max_response_tokens=24, context_budget=480, max_turns=16, max_compactions=3, compaction=compaction
    )
    return RunnerConfig(**{**values, **overrides})


_STRATEGY_RUNS: dict[str, Recording] = {}


def strategy_run(tiny: Tiny, strategy: str) -> Recording:
    """Three Chatter episodes with ``strategy``, recorded once per test session."""
    if strategy not in _STRATEGY_RUNS:
        tasks = [Task(seed, f"group-{seed}") for seed in range(3)]
        _STRATEGY_RUNS[strategy] = tiny.record(strategy_config(strategy), Chatter, tasks)
    return _STRATEGY_RUNS[strategy]


def is_summary(session: Session, event: int, config: RunnerConfig, chat: ChatFormat) -> bool:
    """A generate right after the summary request (policy strategy only)."""
    if config.compaction.strategy != "policy" or event == 0:
        return False
    kind, ids = session.events[event - 1]
    return kind == "append" and config.compaction.summary_request in chat.decode(ids)


def fresh_logprobs(model: Any, token_ids: Sequence[int]) -> list[float]:
    """log_softmax(logits[t-1])[token_t] for t >= 1 of one forward pass over the whole sequence."""
    ids = torch.tensor([list(token_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [0.0] + logp[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()


def check_accounting(rec: Recording) -> None:
    """Every sub-trace equals what its sampler session was given plus what it sampled, in order; see the
    module docstring of agentrl.runner for the contract."""
    cfg, chat = rec.config, rec.tiny.chat
    episodes = rec.result.episodes
    assert len(rec.sampler.sessions) == sum(len(e.sub_traces) for e in episodes)
    assert all(s.closed for s in rec.sampler.sessions.values())
    assert rec.sampler.inner._sessions == {}  # the sampler ends with no open session
    for ep in episodes:
        log = rec.logs[ep.task_id]
        actions = cut = cut_summaries = 0
        for st in ep.sub_traces:
            session = rec.session_of(st)
            assert st.num_tokens <= cfg.context_budget
            n = len(session.prompt)
            mask, logprobs, rewards = [0] * n, [None] * n, [0.0] * n
            gens: list[Generation] = []
            more = False  # the last generate was a summary chunk that the next one continues
            summary_len = None  # tokens of the summary, while it is the last thing in the window
            for event, (kind, value) in enumerate(session.events):
                if kind == "append":
                    mask += [0] * len(value)
                    logprobs += [None] * len(value)
                    rewards += [0.0] * len(value)
                    continue
                gen, _, params = value
                mask += [1] * len(gen.token_ids)
                logprobs += list(gen.logprobs)
                rewards += [0.0] * len(gen.token_ids)
                if more or is_summary(session, event, cfg, chat):
                    # a summary comes in chunks of at most max_response_tokens, one per round
                    so_far = gens.pop() if more else Generation((), (), "length")
                    room = cfg.compaction.max_summary_tokens - len(so_far.token_ids)
                    assert params.max_new_tokens == min(room, cfg.max_response_tokens)
                    gens.append(Generation(so_far.token_ids + gen.token_ids, so_far.logprobs + gen.logprobs,
                                           gen.finish_reason))
                    more = gen.finish_reason == "length" and params.max_new_tokens < room
                    cut_summaries += gen.finish_reason == "length" and not more
                    summary_len = len(gens[-1].token_ids)
                    continue
                summary_len = None
                gens.append(gen)
                assert params.max_new_tokens == cfg.max_response_tokens
                assert (gen.finish_reason == "stop") == (gen.token_ids[-1] in chat.stop_token_ids)
                assert gen.finish_reason == "stop" or len(gen.token_ids) == cfg.max_response_tokens
                cut += gen.finish_reason == "length"
                if actions < len(log):  # else: the step raised (env_error), nothing was logged
                    assert log[actions][0] == chat.action_text(gen.token_ids)
                    step = log[actions][1]  # its reward less its failed calls' penalty, on its last token
                    rewards[-1] = float(step.reward) - cfg.tool_error_penalty * step.info["tool_errors"]
                actions += 1
            assert list(st.token_ids) == session.stream()
            assert list(st.loss_mask) == mask
            assert list(st.logprobs) == logprobs
            assert list(st.rewards) == rewards
            assert st.summary_start == (None if summary_len is None else st.num_tokens - summary_len)
            assert policy_segments(st) == [list(g.token_ids) for g in gens]
            texts = [chat.decode(seg) for seg in policy_segments(st)]
            assert texts == [chat.decode(g.token_ids) for g in gens]
            fresh = fresh_logprobs(rec.tiny.model, st.token_ids)
            for t, lp in enumerate(st.logprobs):
                if lp is not None:
                    assert lp == pytest.approx(fresh[t], abs=1e-4), f"token {t} of {ep.task_id}"
        assert actions == ep.num_turns
        assert len(log) == ep.num_turns - (ep.truncation_reason == "env_error")
        penalties = cfg.tool_error_penalty * sum(r.info["tool_errors"] for _, r, _ in log)
        assert ep.reward == pytest.approx(sum(r.reward for _, r, _ in log) - penalties, abs=1e-12)
        assert (ep.info["cut_responses"], ep.info["cut_summaries"]) == (cut, cut_summaries)
        if ep.final_observation_ids:  # a truncated episode's withheld observation, after its last action
            assert ep.truncated and log
            last_action = policy_segments(ep.sub_traces[-1])[-1]
            withheld = chat.observation_ids(log[-1][1].observation, sampled_ids=last_action)
            assert list(ep.final_observation_ids) == withheld
        else:
            assert ep.terminated or ep.truncation_reason not in ("max_turns", "env_truncated")
    metrics = rec.result.metrics
    assert metrics["cut_responses"] == sum(e.info["cut_responses"] for e in episodes)
    assert metrics["episodes"] == len(episodes)


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Tiny:
    return load_tiny(tiny_model_dir)


# ---- 1. token accounting --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_token_accounting_is_exact_for_every_compaction_strategy(tiny: Tiny, strategy: str) -> None:
    rec = strategy_run(tiny, strategy)
    check_accounting(rec)
    episodes = rec.result.episodes
    assert len(episodes) == 3 and not rec.result.failures
    summaries = [st.summary_start for e in episodes for st in e.sub_traces if st.summary_start is not None]
    assert bool(summaries) == (strategy == "policy")  # only the policy writes summaries into its windows
    assert all(e.num_turns >= 2 for e in episodes)
    if strategy != "none":  # the Chatter never ends by itself: every episode outgrows its window
        assert all(e.num_compactions >= 1 for e in episodes)
    assert sum(e.reward for e in episodes) > 0


def test_a_summary_longer_than_an_action_is_sampled_in_chunks(tiny: Tiny) -> None:
    compaction = CompactionConfig("policy", keep_last_turns=2, max_summary_tokens=20)
    cfg = strategy_config("policy", max_response_tokens=8, max_turns=40, compaction=compaction)
    rec = tiny.record(cfg, Chatter, [Task(seed, f"group-{seed}") for seed in range(3)])
    check_accounting(rec)  # each summary is one turn in its sub-trace, its chunks joined
    assert all(e.num_compactions >= 1 for e in rec.result.episodes)
    limits = {p.max_new_tokens for ps in rec.sampler.params for p in ps}
    assert limits == {8, 4}  # no round asks for more than an action; a summary's last chunk is 20 - 16


def test_actions_and_summaries_of_one_round_share_one_generate(tiny: Tiny) -> None:
    rec = strategy_run(tiny, "policy")
    cfg = rec.config
    limits = [sorted({p.max_new_tokens for p in ps}) for ps in rec.sampler.params]
    assert [cfg.compaction.max_summary_tokens, cfg.max_response_tokens] in limits  # a mixed round
    assert all(len(b) == len(set(b)) for b in rec.sampler.batches)  # each session once per round


@pytest.mark.parametrize("name, options", [("graph_nav", {"size": "small"}), ("ledger", {"num_records": 5})])
def test_token_accounting_is_exact_on_builtin_envs(tiny: Tiny, name: str, options: dict) -> None:
    config = RunnerConfig(
        max_response_tokens=24,
        context_budget=800,  # their prompts hold about 300 to 560 tokens
        max_turns=6,
        compaction=CompactionConfig("policy", max_summary_tokens=20),
    )
    rec = tiny.record(config, lambda: registry.make(name, **options), [Task(s, "g") for s in range(3)])
    check_accounting(rec)
    assert [e.task_id for e in rec.result.episodes] == [f"{name}:{s}" for s in range(3)]
    assert all(e.num_turns >= 1 for e in rec.result.episodes)


def test_save_and_load_round_trip_exactly(tiny: Tiny, tmp_path: Path) -> None:
    rec = strategy_run(tiny, "policy")
    episodes, chat = rec.result.episodes, tiny.chat
    path = tmp_path / "out" / "episodes.jsonl"
    assert save_episodes(path, episodes, decode=chat.decode) == len(episodes)
    assert load_episodes(path) == episodes
    first = json.loads(path.read_text().splitlines()[0])
    for d, st in zip(first["sub_traces"], episodes[0].sub_traces, strict=True):
        assert d["text"] == chat.decode(st.token_ids)
        assert d["policy_text"] == [chat.decode(seg) for seg in policy_segments(st)]


def test_load_names_the_line_of_a_corrupt_record(tiny: Tiny, tmp_path: Path) -> None:
    episodes = strategy_run(tiny, "none").result.episodes
    path = tmp_path / "episodes.jsonl"
    save_episodes(path, episodes[:2])
    record = json.loads(path.read_text().splitlines()[0])
    record["sub_traces"][0]["loss_mask"].pop()  # lengths no longer agree
    path.write_text(path.read_text() + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"episodes\.jsonl:3: .*loss_mask"):
        load_episodes(path)
    path.write_text(path.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"episodes\.jsonl:2:"):
        load_episodes(path)


# ---- 3. caps and cuts -----------------------------------------------------------------------------------


def test_max_turns_truncates_and_is_counted(tiny: Tiny) -> None:
    rec = tiny.record(strategy_config("keep_last", max_turns=3), Chatter, [Task(0, "a"), Task(1, "b")])
    check_accounting(rec)
    episodes = rec.result.episodes
    ends = [(e.end, e.truncation_reason, e.num_turns) for e in episodes]
    assert ends == [("truncated", "max_turns", 3)] * 2
    assert rec.result.metrics["truncated_max_turns"] == 2.0
    # the last observation is never shown to the model, so the sub-trace ends with the last action; the
    # episode keeps it apart, as the state it stopped in
    assert all(e.sub_traces[-1].loss_mask[-1] == 1 for e in episodes)
    for e in episodes:
        last_action = policy_segments(e.sub_traces[-1])[-1]
        withheld = tiny.chat.observation_ids(rec.logs[e.task_id][-1][1].observation, sampled_ids=last_action)
        assert len(withheld) > 0 and list(e.final_observation_ids) == withheld


def test_max_turns_reached_on_a_full_window_ends_without_compacting(tiny: Tiny) -> None:
    # Regression: the runner used to compact (a policy summary, a new window) and only then see the cap,
    # leaving a last sub-trace with no policy tokens and an extra compaction counted.
    for max_turns in range(3, 8):
        config = strategy_config("policy", max_turns=max_turns)
        rec = tiny.record(config, Chatter, [Task(s, "g") for s in range(3)])
        for ep in rec.result.episodes:
            assert ep.truncation_reason in ("max_turns", "max_compactions")
            assert all(st.num_policy_tokens > 0 for st in ep.sub_traces), (max_turns, ep.task_id)


def test_max_total_tokens_bounds_every_action_and_truncates(tiny: Tiny) -> None:
    observation_counted = 0  # caps at which the last action alone would have fitted, but not its observation
    for cap in (860, 880, 900, 920, 940):
        config = strategy_config("keep_last", max_total_tokens=cap, max_turns=50, max_compactions=50)
        rec = tiny.record(config, Chatter, [Task(0, "a")])
        check_accounting(rec)
        (ep,) = rec.result.episodes
        assert (ep.end, ep.truncation_reason) == ("truncated", "max_total_tokens")
        assert ep.num_compactions >= 1
        before = 0  # tokens of the episode's closed sub-traces
        for sid in sorted(rec.sampler.sessions):  # one episode: its sessions in order are its sub-traces
            session = rec.sampler.sessions[sid]
            for _, _, context, params in session.gens():
                assert before + context + params.max_new_tokens <= cap
            before += len(session.stream())
        assert before == ep.num_tokens
        # the cap stopped the next action: with the last observation (withheld, never shown) it would not fit
        _, last_step, _ = rec.logs[ep.task_id][-1]
        last_token = ep.sub_traces[-1].token_ids[-1:]  # only whether it ended with its stop token matters
        withheld = tiny.chat.observation_ids(last_step.observation, sampled_ids=last_token)
        assert ep.sub_traces[-1].loss_mask[-1] == 1  # the episode ends with its last action
        assert list(ep.final_observation_ids) == withheld  # and keeps the withheld observation apart
        assert cap < ep.num_tokens + len(withheld) + config.max_response_tokens
        observation_counted += ep.num_tokens + config.max_response_tokens <= cap
        assert rec.result.metrics["truncated_max_total_tokens"] == 1.0
    assert observation_counted  # which caps depend on the default tokenizer's token counts


def test_an_episode_without_a_policy_token_is_a_failed_task(tiny: Tiny) -> None:
    # Regression: a cap that leaves no room for the first action gave a truncated "episode" of prompt
    # tokens only, with reward 0, which entered its GRPO group's mean and std.
    tasks = [Task(0, "g"), Task(1, "g")]  # one group of two
    probe = tiny.record(strategy_config("keep_last", max_turns=1), Chatter, tasks)
    prompts = [e.sub_traces[0].loss_mask.index(1) for e in probe.result.episodes]  # the prompts' lengths
    cap = min(prompts) + strategy_config("keep_last").max_response_tokens - 1  # short of any first action
    rec = tiny.record(strategy_config("keep_last", max_total_tokens=cap), Chatter, tasks)
    assert rec.result.episodes == []
    assert [f.task.seed for f in rec.result.failures] == [0, 1]
    errors = [f.error for f in rec.result.failures]
    assert all("no policy token" in e and "max_total_tokens" in e for e in errors), errors
    assert rec.result.metrics["failed_tasks"] == 2.0
    assert rec.result.metrics["episodes"] == 0.0


def test_max_compactions_truncates_and_is_counted(tiny: Tiny) -> None:
    config = strategy_config("keep_last", max_compactions=1, max_turns=50)
    rec = tiny.record(config, Chatter, [Task(0, "a"), Task(1, "b")])
    check_accounting(rec)
    for ep in rec.result.episodes:
        assert (ep.end, ep.truncation_reason, ep.num_compactions) == ("truncated", "max_compactions", 1)
    assert rec.result.metrics["truncated_max_compactions"] == 2.0
    assert rec.result.metrics["mean_compactions"] == 1.0


def test_cut_responses_are_counted(tiny: Tiny) -> None:
    rec = strategy_run(tiny, "keep_last")  # check_accounting compares the counts with the generations
    cut = [e.info["cut_responses"] for e in rec.result.episodes]
    assert all(c >= 1 for c in cut)  # a random model rarely samples its stop token within 24 tokens
    assert rec.result.metrics["cut_responses"] == sum(cut)


def test_env_failures_cost_their_own_episode_or_task_only(tiny: Tiny) -> None:
    tasks = [
        Task(0, "ok"),
        Task(1, "reset", {"reset_raises": True}),
        Task(2, "step", {"step_raises_at": 2}),
        Task(3, "long", {"task_words": 600}),
        Task(4, "truncate", {"truncate_after": 2}),
        Task(5, "ok"),
    ]
    rec = tiny.record(strategy_config("keep_last", max_turns=3, max_concurrent=2), Chatter, tasks)
    check_accounting(rec)
    result = rec.result
    assert [f.task.group_id for f in result.failures] == ["reset", "long"]
    assert "RuntimeError: reset exploded on purpose" in result.failures[0].error
    assert "leaves no room for a response" in result.failures[1].error
    ends = {e.group_id: (e.end, e.truncation_reason) for e in result.episodes}
    assert ends == {
        "ok": ("truncated", "max_turns"),
        "step": ("truncated", "env_error"),
        "truncate": ("truncated", "env_truncated"),
    }
    assert [e.group_id for e in result.episodes] == ["ok", "step", "truncate", "ok"]
    ok, error, truncated, _ = result.episodes
    assert error.info["env_error"] == "RuntimeError: step exploded at turn 2"
    assert (ok.num_turns, error.num_turns) == (3, 2)
    log = rec.logs[truncated.task_id]  # truncated after its second final answer (tool turns do not count)
    assert [r.truncated for _, r, _ in log] == [False] * (len(log) - 1) + [True]
    assert sum(r.info["final_answer"] for _, r, _ in log) == 2
    m = result.metrics
    assert (m["failed_tasks"], m["episodes"]) == (2.0, 4.0)
    counts = [m[f"truncated_{r}"] for r in ("env_error", "env_truncated", "max_turns", "context_full")]
    assert counts == [1.0, 1.0, 2.0, 0.0]
    # the envs whose reset or step raised are replaced, never reused; the others are
    assert rec.envs_made == 4


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="^context_budget"):
        RunnerConfig(max_response_tokens=64, context_budget=64)
    with pytest.raises(ValueError, match="^max_response_tokens"):
        RunnerConfig(max_response_tokens=0)
    with pytest.raises(ValueError, match="^compaction.max_summary_tokens"):
        RunnerConfig(
            context_budget=200, max_response_tokens=24, compaction=CompactionConfig(max_summary_tokens=200)
        )
    for penalty in (-0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="^tool_error_penalty"):
            RunnerConfig(tool_error_penalty=penalty)
    keep_last = CompactionConfig("keep_last")
    RunnerConfig(max_response_tokens=64, context_budget=65, compaction=keep_last)  # the smallest budget


class Clumsy(Chatter):
    """Chatter whose expert cycles through turns with 0, 1 (a malformed block) and 2 (bad arguments and an
    unknown tool) failed calls, then a final answer (reward 0.125 times the answers so far)."""

    name = "clumsy"
    SCRIPT = (
        format_tool_call("note", {"text": "fine"}),
        '<tool_call>\n{"name": "note"\n</tool_call>',
        format_tool_call("note", {"txt": "typo"}) + "\n" + format_tool_call("sing", {}),
        "All done.",
    )
    ERRORS = (0, 1, 2, 0)

    def expert_action(self) -> str:
        return self.SCRIPT[self.num_turns % len(self.SCRIPT)]


@pytest.mark.parametrize("penalty", [0.0, 0.25])
def test_tool_error_penalty_is_charged_on_the_turn_of_each_failed_call(tiny: Tiny, penalty: float) -> None:
    config = RunnerConfig(max_response_tokens=48, context_budget=2048, max_turns=8,
                          compaction=CompactionConfig("none"), tool_error_penalty=penalty)
    runner = Runner(TorchSampler(tiny.model), tiny.chat, config)
    (episode,) = runner.run(Clumsy, [Task(0, "g")], teacher=True).episodes
    (st,) = episode.sub_traces
    mask = st.loss_mask
    ends = [i for i, m in enumerate(mask) if m == 1 and (i + 1 == len(mask) or mask[i + 1] == 0)]
    assert len(ends) == episode.num_turns == 8
    answers = [0.0, 0.0, 0.0, 0.125, 0.0, 0.0, 0.0, 0.25]  # the env's own rewards, on the final answers
    expected = [answer - penalty * Clumsy.ERRORS[t % 4] for t, answer in enumerate(answers)]
    assert [st.rewards[i] for i in ends] == expected
    assert sum(st.rewards) == episode.reward == sum(expected)  # nothing else is rewarded
    assert episode.num_tool_errors == 6 and not episode.info["success"]


# ---- 4. runner mechanics --------------------------------------------------------------------------------


def test_more_tasks_than_max_concurrent_all_complete_in_task_order(tiny: Tiny) -> None:
    tasks = [Task(seed, f"group-{seed // 2}") for seed in (6, 5, 4, 3, 2, 1, 0)]
    rec = tiny.record(strategy_config("env", max_turns=2, max_concurrent=3), Chatter, tasks)
    check_accounting(rec)
    episodes = rec.result.episodes
    assert [e.task_id for e in episodes] == [f"chatter:{t.seed}" for t in tasks]
    assert [e.group_id for e in episodes] == [t.group_id for t in tasks]
    assert all(e.num_turns == 2 for e in episodes)
    assert max(len(b) for b in rec.sampler.batches) == 3 == rec.sampler.max_open
    assert rec.envs_made == 3  # environments are reused across tasks


def test_same_seed_gives_identical_episodes(tiny: Tiny) -> None:
    first = strategy_run(tiny, "env")
    tasks = [Task(seed, f"group-{seed}") for seed in range(3)]
    again = tiny.record(strategy_config("env"), Chatter, tasks, seed=0)
    other = tiny.record(strategy_config("env"), Chatter, tasks, seed=1)
    assert again.result.episodes == first.result.episodes
    assert again.sampler.inner._sessions == {}
    assert [e.sub_traces[0].token_ids for e in other.result.episodes] != [
        e.sub_traces[0].token_ids for e in first.result.episodes
    ]


# ---- 5. teacher mode: the experts' demonstrations through the same token stream -----------------------


@pytest.mark.parametrize("strategy", ["policy", "env", "keep_last"])
def test_teacher_mode_records_the_experts_actions_and_summaries(tiny: Tiny, strategy: str) -> None:
    from agentrl.registry import make

    config = RunnerConfig(
        max_response_tokens=48, context_budget=900, max_turns=200, max_compactions=50,
        compaction=CompactionConfig(strategy, keep_last_turns=1, max_summary_tokens=64),
    )
    runner = Runner(TorchSampler(tiny.model), tiny.chat, config)
    result = runner.run(lambda: make("graph_nav", size="small"), [Task(s, str(s)) for s in range(4)],
                        teacher=True)
    assert len(result.episodes) == 4 and all(e.info["success"] for e in result.episodes)
    assert sum(e.num_compactions for e in result.episodes) > 0  # the small window forces compactions
    for episode in result.episodes:
        seed = int(episode.task_id.split(":")[1])
        expert = make("graph_nav", size="small")
        expert.reset(seed=seed)
        actions = []
        while True:  # the expert's own actions, replayed without the runner
            action = expert.expert_action()
            actions.append(action)
            if expert.step(action).terminated:
                break
        segments = [tiny.chat.decode(seg) for st in episode.sub_traces for seg in policy_segments(st)]
        turns = [s for s in segments if "<tool_call>" in s]  # summaries are plain text
        assert turns == [f"{a}<|im_end|>" for a in actions]
        assert len(segments) - len(turns) == (episode.num_compactions if strategy == "policy" else 0)
        assert all(lp == 0.0 for st in episode.sub_traces for lp in st.logprobs if lp is not None)
