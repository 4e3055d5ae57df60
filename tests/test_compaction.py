"""Compaction: the trigger, the resumed window, and each strategy, checked on recorded real runs.

The runs, the recording sampler and the endless ``Chatter`` environment come from ``test_runner``.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from test_runner import STRATEGIES, Chatter, Recording, Session, Tiny, is_summary, load_tiny, strategy_run

from agentrl.compaction import (
    SUMMARY_HEADER,
    SUMMARY_REQUEST,
    CompactionConfig,
    Turn,
    resumed_messages,
    should_compact,
)
from agentrl.sampling import Generation
from agentrl.types import Episode, Message


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Tiny:
    return load_tiny(tiny_model_dir)


# ---- units ----------------------------------------------------------------------------------------------


def test_should_compact_exactly_when_the_next_response_would_not_fit() -> None:
    # 104 + 24 = 128 fits a 128 budget; 105 + 24 = 129 does not.
    assert not should_compact(104, max_response_tokens=24, context_budget=128)
    assert should_compact(105, max_response_tokens=24, context_budget=128)
    # reserve 10: the room is 118; 94 + 24 = 118 fits, 95 + 24 = 119 does not.
    assert not should_compact(94, max_response_tokens=24, context_budget=128, reserve=10)
    assert should_compact(95, max_response_tokens=24, context_budget=128, reserve=10)


def test_resumed_messages_are_task_summary_then_whole_turns() -> None:
    call = '<tool_call>\n{"name": "note", "arguments": {"text": "x"}}\n</tool_call>'
    turns = [
        Turn(call, (Message("tool", "Noted (1)."), Message("user", "Go on."))),
        Turn("plain", (Message("user", "Go on."),)),
    ]
    messages = resumed_messages("the task", "  goal and state \n", turns)
    assert messages == [
        Message("user", "the task"),
        Message("user", f"{SUMMARY_HEADER}\ngoal and state"),
        Message("assistant", call),
        Message("tool", "Noted (1)."),  # a tool call is followed by its result
        Message("user", "Go on."),
        Message("assistant", "plain"),
        Message("user", "Go on."),
    ]
    assert resumed_messages("the task", None, turns[1:]) == [
        Message("user", "the task"), Message("assistant", "plain"), Message("user", "Go on.")
    ]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"strategy": "summarise"}, "strategy"),
        ({"keep_last_turns": -1}, "keep_last_turns"),
        ({"max_summary_tokens": 0}, "max_summary_tokens"),
        ({"summary_request": "  "}, "summary_request"),
    ],
)
def test_compaction_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        CompactionConfig(**kwargs)
    assert set(STRATEGIES) == {CompactionConfig(s).strategy for s in STRATEGIES}


# ---- checks on recorded runs ----------------------------------------------------------------------------


def reserve(rec: Recording) -> int:
    """The room a ``policy`` window keeps for the summary turn: the request (closing a cut turn) and the
    summary (agentrl.compaction's docstring); 0 for the other strategies."""
    c = rec.config.compaction
    if c.strategy != "policy":
        return 0
    request = rec.tiny.chat.observation_ids([Message("user", c.summary_request)], sampled_ids=[])
    return len(request) + c.max_summary_tokens


def last_action(rec: Recording, session: Session) -> tuple[int, Generation, int]:
    """(event index, generation, context tokens after it) of the window's last action."""
    actions = [g for g in session.gens() if not is_summary(session, g[0], rec.config, rec.tiny.chat)]
    event, gen, context, _ = actions[-1]
    return event, gen, context + len(gen.token_ids)


def task_of(ep: Episode) -> tuple[str, list[dict]]:
    env = Chatter()
    task, _ = env.reset(seed=ep.info["seed"])
    return task, [t.schema() for t in env.tools]


def test_the_window_always_fits_the_next_response(tiny: Tiny) -> None:
    for strategy in STRATEGIES:
        rec = strategy_run(tiny, strategy)
        cfg, room = rec.config, rec.config.context_budget - reserve(rec)
        for session in rec.sampler.sessions.values():
            for event, _, context, params in session.gens():
                if is_summary(session, event, cfg, rec.tiny.chat):
                    assert context + params.max_new_tokens <= cfg.context_budget
                else:
                    assert context + cfg.max_response_tokens <= room, strategy
            assert len(session.stream()) <= cfg.context_budget


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compaction_happens_exactly_when_the_observation_would_not_fit(tiny: Tiny, strategy: str) -> None:
    rec = strategy_run(tiny, strategy)
    cfg, chat = rec.config, rec.tiny.chat
    room = cfg.context_budget - reserve(rec)
    points = 0
    for ep in rec.result.episodes:
        log = rec.logs[ep.task_id]
        steps = 0
        for i, st in enumerate(ep.sub_traces):
            session = rec.session_of(st)
            event, gen, context = last_action(rec, session)
            steps += sum(1 for e, *_ in session.gens() if not is_summary(session, e, cfg, chat))
            last = i == len(ep.sub_traces) - 1
            if last and ep.truncation_reason not in ("context_full", "max_compactions"):
                continue
            points += 1
            observation = log[steps - 1][1].observation
            delta = chat.observation_ids(observation, sampled_ids=gen.token_ids)
            assert context + len(delta) + cfg.max_response_tokens > room  # appending it would not fit
            if len(session.events) > event + 1:  # a policy summary was asked for
                assert strategy == "policy"
                # the request follows the observation if that fits, else right after the action
                request = Message("user", cfg.compaction.summary_request)
                with_observation = chat.observation_ids((*observation, request), sampled_ids=gen.token_ids)
                summary_room = cfg.context_budget - cfg.compaction.max_summary_tokens
                alone = chat.observation_ids((request,), sampled_ids=gen.token_ids)
                expected = with_observation if context + len(with_observation) <= summary_room else alone
                assert session.events[event + 1] == ("append", expected)
                assert len(session.events) == event + 3  # then the summary, and the window closes
            else:  # the observation is never appended; policy ends here only at the compaction cap
                assert strategy != "policy" or (last and ep.truncation_reason == "max_compactions")
    assert points >= len(rec.result.episodes)
    if strategy == "none":
        ends = {(len(e.sub_traces), e.truncation_reason) for e in rec.result.episodes}
        assert ends == {(1, "context_full")}
        assert rec.result.metrics["truncated_context_full"] == len(rec.result.episodes)


@pytest.mark.parametrize("strategy", ["policy", "env", "keep_last"])
def test_resumed_window_holds_system_task_summary_and_last_turns(tiny: Tiny, strategy: str) -> None:
    rec = strategy_run(tiny, strategy)
    cfg, chat = rec.config, rec.tiny.chat
    k = cfg.compaction.keep_last_turns
    kept_counts = []
    for ep in rec.result.episodes:
        log = rec.logs[ep.task_id]
        task, tools = task_of(ep)
        steps = 0
        for before, after in zip(ep.sub_traces, ep.sub_traces[1:], strict=False):
            session = rec.session_of(before)
            gens = list(session.gens())
            steps += sum(1 for e, *_ in gens if not is_summary(session, e, cfg, chat))
            summary = {
                "policy": chat.action_text(gens[-1][1].token_ids),  # the policy's sampled summary
                "env": log[steps - 1][2],  # the environment's state_digest() after the last step
                "keep_last": None,
            }[strategy]
            prompt = rec.session_of(after).prompt
            turns = [Turn(a, r.observation) for a, r, _ in log[:steps]]
            candidates = {  # the oldest kept turns are dropped while the window would not fit
                j: chat.context_ids(Chatter.system_prompt, tools, resumed_messages(task, summary, turns[-j:]))
                for j in range(min(k, steps), 0, -1)
            }
            no_turns = resumed_messages(task, summary, [])
            candidates[0] = chat.context_ids(Chatter.system_prompt, tools, no_turns)
            kept = [j for j, ids in candidates.items() if ids == prompt]
            assert kept, "the resumed window is not system, task, summary and the last turns"
            kept_counts.append(kept[0])
            text = chat.decode(prompt)
            assert text.startswith(f"<|im_start|>system\n{Chatter.system_prompt}")
            position = text.index(f"<|im_start|>user\n{task}<|im_end|>")
            if summary is None:
                assert SUMMARY_HEADER not in text
            else:
                position = text.index(f"{SUMMARY_HEADER}\n{nfc(summary.strip())}", position)
            for action, result, _ in log[steps - kept[0] : steps]:
                position = text.index(f"<|im_start|>assistant\n{nfc(action)}<|im_end|>", position)
                for message in result.observation:  # the whole observation follows its action
                    position = text.index(nfc(message.content), position)
            assert text.endswith("<|im_start|>assistant\n")
            assert after.loss_mask[: len(prompt)] == (0,) * len(prompt)
    assert kept_counts and max(kept_counts) == k


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def test_policy_summaries_are_trainable_tokens_after_the_request(tiny: Tiny) -> None:
    rec = strategy_run(tiny, "policy")
    cfg, chat = rec.config, rec.tiny.chat
    summaries = 0
    for ep in rec.result.episodes:
        for st in ep.sub_traces[:-1]:
            session = rec.session_of(st)
            event, gen, _, params = list(session.gens())[-1]
            assert params.max_new_tokens == cfg.compaction.max_summary_tokens
            kind, request = session.events[event - 1]
            assert kind == "append"
            assert chat.decode(request).endswith(f"{SUMMARY_REQUEST}<|im_end|>\n<|im_start|>assistant\n")
            n = len(gen.token_ids)  # the summary ends the sub-trace: mask 1, with its log-probs
            assert st.token_ids[-n:] == gen.token_ids
            assert st.loss_mask[-n:] == (1,) * n
            assert st.logprobs[-n:] == gen.logprobs
            assert st.loss_mask[-n - len(request) : -n] == (0,) * len(request)
            summaries += 1
    assert summaries >= len(rec.result.episodes)
    assert rec.result.metrics["cut_summaries"] >= 1  # 20 random tokens rarely end on the stop token


def test_env_strategy_uses_the_state_digest_and_samples_no_summary(tiny: Tiny) -> None:
    rec = strategy_run(tiny, "env")
    chat = rec.tiny.chat
    for ep in rec.result.episodes:
        log = rec.logs[ep.task_id]
        for st in ep.sub_traces[1:]:
            text = chat.decode(rec.session_of(st).prompt)
            digest = text.split(f"{SUMMARY_HEADER}\n", 1)[1].split("<|im_end|>", 1)[0]
            assert digest.startswith("Answers so far: ")
            assert digest in [d for _, _, d in log]
        assert sum(1 for st in ep.sub_traces for _ in rec.session_of(st).gens()) == ep.num_turns
    generates = [p for s in rec.sampler.sessions.values() for *_, p in s.gens()]
    assert {p.max_new_tokens for p in generates} == {rec.config.max_response_tokens}
