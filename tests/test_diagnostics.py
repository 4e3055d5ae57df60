"""Credit diagnostics (agentrl.diagnostics): per sub-trace index and per group, hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.batch import Row
from agentrl.diagnostics import credit_metrics, explained_variance, slot_of
from agentrl.types import Episode, SubTrace


def _row(episode: int, index: int, mask: list[int], adv: list[float], values=None, returns=None) -> Row:
    n = len(mask)
    t = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    return Row(episode_index=episode, sub_trace_index=index, token_ids=torch.arange(n),
               loss_mask=torch.tensor(mask, dtype=torch.bool), old_logprobs=torch.zeros(n),
               rewards=torch.zeros(n), advantages=t(adv),
               old_values=None if values is None else t(values),
               returns=None if returns is None else t(returns))


def _episode(group: str, windows: int) -> Episode:
    sub = SubTrace((1, 2), (0, 1), (None, -0.5), (0.0, 0.0))
    return Episode((sub,) * windows, task_id=group, group_id=group, end="terminated")


def test_per_window_advantages_and_explained_variance():
    rows = [
        # window 0 of two episodes: policy advantages 1, 3 | 5 (masked-out 9s never count)
        _row(0, 0, [0, 1, 1], [9.0, 1.0, 3.0], values=[0.0, 1.0, 1.0], returns=[0.0, 2.0, 0.0]),
        _row(1, 0, [0, 1], [9.0, 5.0], values=[0.0, 2.0], returns=[0.0, 2.0]),
        # window 1: advantages -1, -1 (variance 0); window 4 and 7 pool into 3+: advantages 2 and 4
        _row(0, 1, [0, 1, 1], [0.0, -1.0, -1.0], values=[0.0, 0.5, 0.5], returns=[0.0, 0.5, 0.5]),
        _row(0, 4, [0, 1], [0.0, 2.0], values=[0.0, 0.0], returns=[0.0, 1.0]),
        _row(1, 7, [0, 1], [0.0, 4.0], values=[0.0, 0.0], returns=[0.0, 3.0]),
    ]
    out = credit_metrics(rows, [])
    # window 0: mean (1 + 3 + 5) / 3 = 3, variance (4 + 0 + 4) / 3 = 8/3
    assert out["credit/sub_trace_0/adv_mean"] == pytest.approx(3.0)
    assert out["credit/sub_trace_0/adv_var"] == pytest.approx(8 / 3)
    # R = [2, 0, 2], V = [1, 1, 2]: R - V = [1, -1, 0], Var = 2/3; Var(R) = 8/9 -> 1 - (2/3)/(8/9) = 0.25
    assert out["credit/sub_trace_0/explained_variance"] == pytest.approx(0.25)
    assert out["credit/sub_trace_1/adv_var"] == 0.0
    assert math.isnan(out["credit/sub_trace_1/explained_variance"])  # returns without variance: undefined
    assert out["credit/sub_trace_3+/adv_mean"] == pytest.approx(3.0)
    # R = [1, 3], V = [0, 0]: residual variance = Var(R) -> 0
    assert out["credit/sub_trace_3+/explained_variance"] == pytest.approx(0.0)
    assert "credit/sub_trace_2/adv_mean" not in out  # no window 2 in the batch


def test_grpo_rows_have_no_explained_variance_and_groups_are_counted():
    rows = [_row(0, 0, [0, 1], [0.0, 0.5]), _row(1, 0, [0, 1], [0.0, -0.5])]
    episodes = [_episode("a", 1), _episode("a", 3), _episode("b", 2), _episode("b", 2), _episode("c", 1)]
    out = credit_metrics(rows, episodes)
    assert "credit/sub_trace_0/explained_variance" not in out
    assert out["credit/sub_trace_0/adv_mean"] == 0.0
    assert (out["credit/groups"], out["credit/uneven_groups"]) == (3.0, 1.0)  # only "a" mixes 1 and 3


def test_slots_and_explained_variance_edges():
    assert [slot_of(i) for i in range(6)] == ["0", "1", "2", "3+", "3+", "3+"]
    assert explained_variance(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert math.isnan(explained_variance(torch.zeros(0), torch.zeros(0)))
    # returns 0 but for a 1e-5 blip (a KL penalty's size): Var(R) says nothing; the old formula gave -1e9
    returns = torch.tensor([0.0, 0.0, 0.0, 1e-5])
    assert math.isnan(explained_variance(returns, torch.tensor([0.1, -0.1, 0.2, 0.0])))
    # a real spread of returns is still scored, however bad the values
    assert explained_variance(torch.tensor([0.0, 1.0]), torch.tensor([3.0, -3.0])) == pytest.approx(-48.0)
