"""The data model validates itself on construction and round-trips through dicts (JSON)."""

import json

import pytest

from agentrl.types import Episode, Message, SubTrace


def _sub(rewards=(0.0, 0.0, 1.0)) -> SubTrace:
    return SubTrace(token_ids=(5, 6, 7), loss_mask=(0, 1, 1), logprobs=(None, -0.5, -0.25), rewards=rewards)


def test_subtrace_counts_and_reward():
    s = _sub(rewards=(0.0, -0.1, 1.0))
    assert (s.num_tokens, s.num_policy_tokens) == (3, 2)
    assert s.reward == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loss_mask": (0, 1)}, "loss_mask"),
        ({"rewards": (0.0,)}, "rewards"),
        ({"loss_mask": (0, 2, 1)}, "loss_mask"),
        ({"loss_mask": (1, 1, 1), "logprobs": (-0.1, -0.5, -0.25)}, "loss_mask"),  # no prompt before it
        ({"logprobs": (None, None, -0.25)}, "logprobs"),  # a policy token without its log-prob
        ({"logprobs": (-1.0, -0.5, -0.25)}, "logprobs"),  # a log-prob on a prompt token
        ({"logprobs": (None, 0.5, -0.25)}, "logprobs"),  # not a log-probability
        ({"logprobs": (None, float("nan"), -0.25)}, "logprobs"),
        ({"token_ids": (5, -6, 7)}, "token_ids"),
        ({"rewards": (0.0, float("inf"), 0.0)}, "rewards"),
    ],
)
def test_subtrace_rejects_bad_fields_by_name(kwargs, field):
    base = dict(
        token_ids=(5, 6, 7), loss_mask=(0, 1, 1), logprobs=(None, -0.5, -0.25), rewards=(0.0, 0.0, 1.0)
    )
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        SubTrace(**base)


def test_subtrace_rejects_empty():
    with pytest.raises(ValueError, match="token_ids"):
        SubTrace(token_ids=(), loss_mask=(), logprobs=(), rewards=())


def test_episode_derived_counters():
    e = Episode(sub_traces=[_sub((0.0, 0.0, 0.5)), _sub((0.0, 0.0, 0.25))], task_id="t:1", group_id="g",
                end="truncated", truncation_reason="max_turns", num_turns=4)
    assert e.num_compactions == 1
    assert e.reward == pytest.approx(0.75)
    assert (e.num_tokens, e.num_policy_tokens) == (6, 4)
    assert e.truncated and not e.terminated


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sub_traces": ()}, "sub_traces"),
        ({"group_id": ""}, "group_id"),
        ({"end": "done"}, "end"),
        ({"end": "truncated"}, "truncation_reason"),  # truncated needs a reason
        ({"truncation_reason": "max_turns"}, "truncation_reason"),  # terminated must not have one
        ({"num_turns": -1}, "num_turns"),
    ],
)
def test_episode_rejects_bad_fields_by_name(kwargs, field):
    base = dict(sub_traces=(_sub(),), task_id="t", group_id="g", end="terminated")
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Episode(**base)


def test_episode_round_trips_through_json():
    e = Episode(sub_traces=(_sub(), _sub()), task_id="ledger:3", group_id="7", end="terminated",
                num_turns=9, num_tool_errors=2, info={"success": True})
    again = Episode.from_dict(json.loads(json.dumps(e.to_dict())))
    assert again == e


def test_message_role_is_checked():
    assert Message("tool", "ok").role == "tool"
    with pytest.raises(ValueError, match="role"):
        Message("robot", "hi")
