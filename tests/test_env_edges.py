"""An environment's edges through the runner (issue 19): calls that hang or exit, observations too long to
tokenise or unencodable, and what the episode record says happened (docs/runner.md, docs/reliability.md).

A scripted sampler stands in for the model, so each test controls exactly what the "model" writes."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
from scripted import play

from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.env import StepResult, ToolEnv
from agentrl.env_calls import EnvCalls, EnvRaised, EnvTimeout
from agentrl.models import load_model
from agentrl.textsafety import capped
from agentrl.tools import format_tool_call, tool
from agentrl.types import Message

BAD_CALL = '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>'


@pytest.fixture(scope="module")
def chat(tiny_model_dir: Path) -> ChatFormat:
    return ChatFormat(load_model(tiny_model_dir)[1])


class Talker(ToolEnv):
    """Answers every final answer with "Go on." (the episode runs to the caps); a ``shout`` tool whose
    output is not limited. Hooks for the tests: ``hang`` (an Event a call waits on, at seed 1),
    ``exit_with`` (an exception the step raises at seed 1), ``huge`` (a reply of that many characters)."""

    name = "talker"
    system_prompt = "Talk."
    hang: threading.Event | None = None
    hang_in = "step"
    exit_with: BaseException | None = None
    huge = 0

    def setup(self, rng: random.Random, options: dict) -> str:
        self.seed = self.task_id.split(":")[1]  # type: ignore[union-attr]
        self._maybe_hang("reset")
        return "Talk about rivers."

    def _maybe_hang(self, where: str) -> None:
        if self.hang is not None and self.hang_in == where and self.seed == "1":
            self.hang.wait(30)  # released by the test; bounded so a broken runner cannot hang the suite

    @tool(max_output_chars=10**9)
    def shout(self, times: int) -> str:
        """Shout.

        Args:
            times: how many times.
        """
        return "A" * times

    def on_answer(self, text: str) -> str | None:
        return "B" * self.huge if self.huge else "Go on."

    def step(self, action: str) -> StepResult:
        self._maybe_hang("step")
        if self.exit_with is not None and self.seed == "1":
            raise self.exit_with
        return super().step(action)


def talker(**attrs: Any) -> Any:
    def make() -> Talker:
        env = Talker()
        for key, value in attrs.items():
            setattr(env, key, value)
        return env
    return make


# ---- item 15: a call that hangs ends its own episode ---------------------------------------------


@pytest.mark.parametrize("where", ["step", "reset"])
def test_a_hanging_env_call_ends_only_its_own_episode(chat: ChatFormat, where: str) -> None:
    # Before: the runner called step/reset inline, so the hang held every episode of the batch.
    release = threading.Event()
    try:
        result = play(chat, "Hello.", talker(hang=release, hang_in=where), tasks=3, env_timeout_s=0.2)
    finally:
        release.set()
    seeds = {e.info["seed"]: e for e in result.episodes}
    assert sorted(seeds) == ([0, 2] if where == "reset" else [0, 1, 2])
    for seed in (0, 2):
        assert seeds[seed].truncation_reason == "max_turns" and seeds[seed].num_turns == 3
    if where == "step":
        hung = seeds[1]
        assert hung.truncation_reason == "env_error" and hung.num_turns == 1
        assert "step() did not return within env_timeout_s=0.2 s" in hung.info["env_error"]
    else:
        (failure,) = result.failures
        assert failure.task.seed == 1 and failure.env_broken
        assert "reset() did not return within env_timeout_s=0.2 s" in failure.error


def test_env_calls_time_out_and_drop_the_stuck_environment() -> None:
    calls, release, env = EnvCalls(0.05), threading.Event(), object()
    assert calls.call(env, "f()", lambda: 41 + 1) == 42
    with pytest.raises(EnvTimeout, match=r"f\(\) did not return within"):
        calls.call(env, "f()", lambda: release.wait(30))
    assert calls.num_timeouts == 1
    assert calls.call(env, "f()", lambda: "fresh worker") == "fresh worker"  # the stuck one was dropped
    release.set()
    calls.close()
    inline = EnvCalls(None)
    assert inline.call(env, "g()", threading.get_ident) == threading.get_ident()  # no thread


# ---- item 17: sys.exit and KeyboardInterrupt inside a step ----------------------------------------


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()], ids=["exit", "interrupt"])
@pytest.mark.parametrize("timeout", [5.0, None], ids=["worker", "inline"])
def test_an_env_that_exits_or_interrupts_costs_its_episode(chat: ChatFormat, raised: BaseException,
                                                            timeout: float | None) -> None:
    # Before: both are BaseException, which passed the runner's `except Exception` and ended the run.
    if timeout is None and isinstance(raised, KeyboardInterrupt):
        # inline, an env's KeyboardInterrupt cannot be told from a real Ctrl-C: it stops the run
        with pytest.raises(KeyboardInterrupt):
            play(chat, "Hello.", talker(exit_with=raised), env_timeout_s=timeout)
        return
    result = play(chat, "Hello.", talker(exit_with=raised), env_timeout_s=timeout)
    by_seed = {e.info["seed"]: e for e in result.episodes}
    assert by_seed[0].truncation_reason == "max_turns"
    assert by_seed[1].truncation_reason == "env_error"
    assert f"step() raised {type(raised).__name__}" in by_seed[1].info["env_error"]
    with pytest.raises(EnvRaised):
        EnvCalls(timeout).call(None, "step()", lambda: (_ for _ in ()).throw(SystemExit(1)))


def test_a_constructor_that_raises_costs_its_task(chat: ChatFormat) -> None:
    built = []

    def make() -> Talker:
        built.append(1)
        if len(built) == 1:
            raise RuntimeError("no licence server")
        return Talker()

    result = play(chat, "Hello.", make, tasks=3, max_concurrent=1)
    (failure,) = result.failures
    assert failure.task.seed == 0 and "building the environment raised RuntimeError: no licence server" in (
        failure.error)
    assert len(result.episodes) == 2


# ---- item 16: observations too long or unencodable ------------------------------------------------


def test_a_huge_tool_output_is_capped_before_it_is_tokenised(chat: ChatFormat) -> None:
    # Before: the 2-million-character output was tokenised whole (and with 50 million, ran out of memory).
    call = format_tool_call("shout", {"times": 2_000_000})
    result = play(chat, call, Talker, tasks=1, max_turns=2, context_budget=512, max_response_tokens=64,
                  compaction=CompactionConfig(strategy="none"))
    (episode,) = result.episodes
    cap = 16 * 512
    assert episode.info["observation_chars_cut"] == 2_000_000 - cap
    assert episode.truncation_reason == "context_full"  # 8192 characters do not fit 512 tokens either
    assert len(episode.final_observation_ids) < cap + 100


def test_a_huge_reply_is_capped_to_max_observation_chars(chat: ChatFormat) -> None:
    result = play(chat, "Hello.", talker(huge=10_000), tasks=1, max_turns=2, context_budget=1024,
                  max_observation_chars=50)
    (episode,) = result.episodes
    assert episode.info["observation_chars_cut"] == 2 * (10_000 - 50)  # two replies, each cut
    text = chat.decode(list(episode.sub_traces[0].token_ids))
    assert "B" * 50 + "\n[... cut: 9950 more characters]" in text
    assert capped("abc", 3) == ("abc", 0) and capped("abcd", 3) == ("abc\n[... cut: 1 more characters]", 1)


class TruncatesWithSurrogates(ToolEnv):
    name = "surrogate_cap"
    system_prompt = "Talk."

    def setup(self, rng: random.Random, options: dict) -> str:
        return "Say anything."

    def on_answer(self, text: str) -> str | None:
        self.finish(0.0, success=False, truncated=True)
        return "Out of moves \ud800."


def test_an_unencodable_observation_at_an_env_truncation_is_cleaned(chat: ChatFormat) -> None:
    # Before: the withheld observation of an env_truncated episode was tokenised uncleaned and the
    # tokenizer raised, ending the run.
    result = play(chat, "Hello.", TruncatesWithSurrogates, tasks=1)
    (episode,) = result.episodes
    assert episode.truncation_reason == "env_truncated" and episode.info["text_cleaned"] == 1
    assert "\ufffd" in chat.decode(list(episode.final_observation_ids))


# ---- item 19: what the episode record holds -------------------------------------------------------


def test_the_record_counts_tool_calls_and_errors_over_the_whole_episode(chat: ChatFormat) -> None:
    # Before: info["tool_calls"] and info["tool_errors"] were the last step's (1 and 1).
    result = play(chat, BAD_CALL, Talker, tasks=1, max_turns=5)
    (episode,) = result.episodes
    assert episode.num_turns == 5
    assert episode.info["tool_calls"] == 5 and episode.info["tool_errors"] == 5
    assert episode.num_tool_errors == 5


def test_each_window_records_why_it_ended(chat: ChatFormat) -> None:
    result = play(chat, "Hello there, I keep talking about rivers.", Talker, tasks=1, max_turns=12,
                  context_budget=300, max_response_tokens=16,
                  compaction=CompactionConfig(strategy="keep_last", keep_last_turns=1))
    (episode,) = result.episodes
    ends = [s.end for s in episode.sub_traces]
    assert len(ends) >= 2 and ends[:-1] == ["compaction"] * (len(ends) - 1)
    assert ends[-1] == "max_turns" == episode.truncation_reason
    assert episode.num_compactions == len(ends) - 1


def test_a_policy_summary_followed_by_context_full_counts_as_a_compaction(chat: ChatFormat) -> None:
    # Before: compactions were counted as sub-traces - 1, so this episode (one window, closed by the
    # policy's summary, whose resumed window had no room) counted 0.
    env = Talker()
    task, _ = env.reset(seed=0)
    prompt = len(chat.prompt_ids(env.system_prompt, [t.schema() for t in env.tools], task))
    c = CompactionConfig(strategy="policy", keep_last_turns=0)
    request = len(chat.observation_ids([Message("user", c.summary_request)], sampled_ids=[]))
    budget, response = 400, 16
    summary = budget - prompt - response - request  # the first action fits exactly; the summary is as long
    c = CompactionConfig(strategy="policy", keep_last_turns=0, max_summary_tokens=summary)
    result = play(chat, "rivers " * 400, Talker, tasks=1, max_turns=5, context_budget=budget,
                  max_response_tokens=response, compaction=c)
    (episode,) = result.episodes
    assert episode.truncation_reason == "context_full"
    assert [s.end for s in episode.sub_traces] == ["compaction"]
    assert episode.sub_traces[0].summary_start is not None
    assert episode.num_compactions == 1


def test_a_cut_response_is_closed_only_when_an_observation_follows_it(chat: ChatFormat) -> None:
    # docs/runner.md: the observation delta after a cut response starts with <|im_end|> at mask 0; a cut
    # response that ends its window (here the last action, stopped by max_turns) has no closing token.
    result = play(chat, "rivers " * 100, Talker, tasks=1, max_turns=2, max_response_tokens=8)
    (episode,) = result.episodes
    assert episode.info["cut_responses"] == 2
    st = episode.sub_traces[0]
    ids, mask = st.token_ids, st.loss_mask
    first_cut_end = next(i for i in range(len(ids)) if mask[i] and not mask[i + 1])
    assert ids[first_cut_end] != chat.im_end_id and ids[first_cut_end + 1] == chat.im_end_id
    assert mask[first_cut_end + 1] == 0
    assert mask[-1] == 1 and ids[-1] != chat.im_end_id  # the last, cut action ends the sub-trace
    assert episode.final_observation_ids[0] == chat.im_end_id  # the withheld delta would have closed it
