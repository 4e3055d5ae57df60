"""Advantages: hand-computed cases, masking invariances, episode-level GAE against the concatenation of
sub-traces, the fast GAE against a slow per-token reference, GRPO groups, whitening, and bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.advantages import (
    _reverse_scan,
    episode_gae,
    gae,
    length_adaptive_lambda,
    single_episode_gae,
)
from agentrl.group_advantages import broadcast_to_tokens, grpo_advantages, whiten

NAN = float("nan")
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Slow, obvious references: one Python loop per token.


def ref_gae(rewards, values, mask, gamma, lam, bootstrap=0.0):
    """GAE of one row as lists of floats, walking its policy tokens right to left."""
    T = len(mask)
    adv, ret = [0.0] * T, [0.0] * T
    next_value, next_adv = bootstrap, 0.0
    for t in reversed(range(T)):
        if not mask[t]:
            continue
        delta = rewards[t] + gamma * next_value - values[t]
        adv[t] = delta + gamma * lam * next_adv
        ret[t] = adv[t] + values[t]
        next_value, next_adv = values[t], adv[t]
    return adv, ret


def ref_episode_gae(subtraces, gamma, lam, truncated, truncation, mode, bootstrap_value=0.0):
    """Episode-level GAE of one episode given as [(rewards, values, mask), ...] lists, by concatenation;
    ``bootstrap_value``: the value of the state a truncated episode stopped in.

    Returns per sub-trace (advantages, returns, keep) lists."""
    flat = [(r, v) for rs, vs, ms in subtraces for r, v, m in zip(rs, vs, ms, strict=True) if m]
    end_value = bootstrap_value if truncated and truncation == "bootstrap" else 0.0
    if mode == "episode":
        n = len(flat)
        adv_flat, ret_flat = ref_gae(
            [r for r, _ in flat], [v for _, v in flat], [1] * n, gamma, lam, end_value
        )
        out, k = [], 0
        for _, _, ms in subtraces:
            adv, ret = [0.0] * len(ms), [0.0] * len(ms)
            for t, m in enumerate(ms):
                if m:
                    adv[t], ret[t] = adv_flat[k], ret_flat[k]
                    k += 1
            out.append((adv, ret))
    else:
        out, later = [], len(flat)
        for rs, vs, ms in subtraces:
            later -= sum(ms)
            adv, _ = ref_gae(rs, vs, ms, gamma, lam, end_value if later == 0 and sum(ms) else 0.0)
            scale = (gamma * lam) ** later
            adv = [a * scale for a in adv]
            out.append((adv, [a + v if m else 0.0 for a, v, m in zip(adv, vs, ms, strict=True)]))
    drop = truncated and truncation == "mask"
    return [
        ([0.0] * len(a) if drop else a, [0.0] * len(r) if drop else r, [bool(m) and not drop for m in ms])
        for (a, r), (_, _, ms) in zip(out, subtraces, strict=True)
    ]


# ----------------------------------------------------------------------------------------------------
# gae: hand-computed cases


def test_gae_observation_tokens_in_the_middle_and_an_all_masked_row():
    # Row 0: policy, policy, obs, obs, policy. The observation tokens hold junk (NaN, 9) that must
    # never be read. gamma = 0.9, lam = 0.5, so gamma * lam = 0.45:
    #   t=4: delta = 1 + 0.9*0   - 0.8 = 0.2             A = 0.2
    #   t=1: delta = 0 + 0.9*0.8 - 0.6 = 0.12 (skip 2, 3) A = 0.12 + 0.45*0.2   = 0.21
    #   t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04            A = 0.04 + 0.45*0.21  = 0.1345
    #   returns = A + V = 0.6345, 0.81, 1.0
    # Row 1 has no policy token: all zeros, whatever its bootstrap (5) and its junk.
    rewards = _t([[0.0, 0.0, NAN, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0, NAN]])
    values = _t([[0.5, 0.6, 9.0, NAN, 0.8], [1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5, bootstrap=_t([0.0, 5.0]))
    torch.testing.assert_close(adv, _t([[0.1345, 0.21, 0.0, 0.0, 0.2], [0.0] * 5]))
    torch.testing.assert_close(ret, _t([[0.6345, 0.81, 0.0, 0.0, 1.0], [0.0] * 5]))


def test_gae_bootstrap_and_lambda_per_row():
    # Both rows: V = [1, 2], r = 0, bootstrap 3, gamma = 1.
    #   deltas: t=1: 0 + 3 - 2 = 1;  t=0: 0 + 2 - 1 = 1
    #   lam = 0: A = [1, 1],           returns = [2, 3]
    #   lam = 1: A = [1 + 1, 1] = [2, 1], returns = [3, 3]
    values = _t([[1.0, 2.0], [1.0, 2.0]])
    adv, ret = gae(
        torch.zeros(2, 2, dtype=torch.float64),
        values,
        torch.ones(2, 2, dtype=torch.bool),
        gamma=1.0,
        lam=_t([0.0, 1.0]),
        bootstrap=_t([3.0, 3.0]),
    )
    torch.testing.assert_close(adv, _t([[1.0, 1.0], [2.0, 1.0]]))
    torch.testing.assert_close(ret, _t([[2.0, 3.0], [3.0, 3.0]]))


def test_gae_lambda_zero_gamma_zero_is_reward_minus_value():
    # gamma = 0: A_t = r_t - V_t, no bootstrap at all (0^0 = 1 must not leak a next value in).
    adv, ret = gae(_t([[1.0, 2.0, 3.0]]), _t([[0.5, 0.5, 0.5]]), torch.ones(1, 3), gamma=0.0, lam=0.0)
    torch.testing.assert_close(adv, _t([[0.5, 1.5, 2.5]]))
    torch.testing.assert_close(ret, _t([[1.0, 2.0, 3.0]]))


def test_gae_long_row_stays_exact_across_many_blocks():
    # 3000 policy tokens with gamma*lam = 0.9: c^3000 ~ 1e-137 would underflow a naive rescaling.
    g = torch.Generator().manual_seed(0)
    T = 3000
    rewards, values = torch.randn(1, T, generator=g, dtype=torch.float64), torch.randn(1, T, generator=g)
    values = values.double()
    mask = torch.rand(1, T, generator=g) < 0.7
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.95)
    ref_adv, ref_ret = ref_gae(rewards[0].tolist(), values[0].tolist(), mask[0].tolist(), 0.95, 0.95)
    torch.testing.assert_close(adv[0], _t(ref_adv))
    torch.testing.assert_close(ret[0], _t(ref_ret))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    x = torch.ones(2, 3, dtype=dtype)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert all(out.dtype == dtype for out in gae(x, x, mask, gamma=1.0, lam=1.0))
    out = episode_gae(x, x, mask, torch.tensor([0, 0]), gamma=1.0, lam=1.0, truncated=torch.tensor([False]))
    assert out.advantages.dtype == dtype and out.returns.dtype == dtype
    assert whiten(x, mask).dtype == dtype
    assert grpo_advantages(x[0], [0, 0, 1]).dtype == dtype


# ----------------------------------------------------------------------------------------------------
# gae: fast vs slow, and masked positions never matter


@st.composite
def gae_batches(draw, max_rows=4, max_len=70):
    """Rows up to 70 tokens long (three scan blocks of 32), random masks, a seed for the numbers."""
    B = draw(st.integers(1, max_rows))
    T = draw(st.integers(1, max_len))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.rand(B, T, generator=g) < density
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    gamma = draw(st.sampled_from([0.0, 0.5, 0.99, 1.0]))
    per_row = draw(st.booleans())
    lam = (
        torch.rand(B, generator=g, dtype=torch.float64) if per_row else draw(st.sampled_from([0.0, 0.9, 1.0]))
    )
    bootstrap = torch.randn(B, generator=g, dtype=torch.float64)
    return rewards, values, mask, gamma, lam, bootstrap


@SETTINGS
@given(gae_batches())
def test_gae_agrees_with_the_slow_reference(batch):
    rewards, values, mask, gamma, lam, bootstrap = batch
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam, bootstrap=bootstrap)
    for b in range(rewards.shape[0]):
        lam_b = float(lam[b]) if isinstance(lam, torch.Tensor) else lam
        ref = ref_gae(
            rewards[b].tolist(), values[b].tolist(), mask[b].tolist(), gamma, lam_b, float(bootstrap[b])
        )
        torch.testing.assert_close(adv[b], _t(ref[0]))
        torch.testing.assert_close(ret[b], _t(ref[1]))


@SETTINGS
@given(gae_batches(), st.sampled_from([NAN, float("inf"), 1e6, -3.0]))
def test_gae_ignores_rewards_and_values_at_masked_positions(batch, junk):
    rewards, values, mask, gamma, lam, bootstrap = batch
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam, bootstrap=bootstrap)
    adv2, ret2 = gae(
        torch.where(mask, rewards, junk),
        torch.where(mask, values, -junk),
        mask,
        gamma=gamma,
        lam=lam,
        bootstrap=bootstrap,
    )
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


@SETTINGS
@given(st.integers(1, 40), st.sampled_from([1, 2, 5, 32]), st.integers(0, 2**31 - 1))
def test_reverse_scan_block_size_does_not_matter(T, chunk, seed):
    # S_t = x_t + (c if m_t else 1) * S_{t+1}, written out one step at a time.
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, T, generator=g) < 0.6
    x = torch.where(mask, torch.randn(3, T, generator=g, dtype=torch.float64), 0.0)
    c = torch.rand(3, generator=g, dtype=torch.float64)
    expected = torch.zeros(3, T + 1, dtype=torch.float64)
    for t in reversed(range(T)):
        expected[:, t] = x[:, t] + torch.where(mask[:, t], c, 1.0) * expected[:, t + 1]
    torch.testing.assert_close(_reverse_scan(x, mask, c, chunk=chunk), expected[:, :T])


# ----------------------------------------------------------------------------------------------------
# Episode-level GAE


def _two_subtraces():
    # Sub-trace 0: [prompt, policy, policy, obs]; sub-trace 1: [summary prompt, prompt, policy, policy].
    # Policy values in order 0.5, 0.6 | 0.7, 0.8; reward 1 on the very last token; junk elsewhere.
    rewards = _t([[NAN, 0.0, 0.0, 7.0], [7.0, NAN, 0.0, 1.0]])
    values = _t([[9.0, 0.5, 0.6, NAN], [NAN, 9.0, 0.7, 0.8]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    return rewards, values, mask


def test_episode_gae_terminated_chains_subtraces():
    # Concatenated policy tokens: V = [0.5, 0.6, 0.7, 0.8], r = [0, 0, 0, 1], bootstrap 0,
    # gamma = 0.9, lam = 0.5 (gamma*lam = 0.45):
    #   t3: delta = 1 - 0.8 = 0.2                A = 0.2
    #   t2: delta = 0.9*0.8 - 0.7 = 0.02         A = 0.02 + 0.45*0.2   = 0.11
    #   t1: delta = 0.9*0.7 - 0.6 = 0.03         A = 0.03 + 0.45*0.11  = 0.0795  (bootstraps from t2,
    #                                                                              the next sub-trace)
    #   t0: delta = 0.9*0.6 - 0.5 = 0.04         A = 0.04 + 0.45*0.0795 = 0.075775
    rewards, values, mask = _two_subtraces()
    out = episode_gae(
        rewards, values, mask, torch.tensor([0, 0]), gamma=0.9, lam=0.5, truncated=torch.tensor([False])
    )
    torch.testing.assert_close(out.advantages, _t([[0.0, 0.075775, 0.0795, 0.0], [0.0, 0.0, 0.11, 0.2]]))
    torch.testing.assert_close(out.returns, _t([[0.0, 0.575775, 0.6795, 0.0], [0.0, 0.0, 0.81, 1.0]]))
    assert torch.equal(out.mask, mask.bool())


def test_episode_gae_truncated_bootstraps_from_the_state_it_stopped_in_or_is_masked_or_ends():
    # Truncated, bootstrap: the state the episode stopped in (after its last observation) is worth 0.3,
    # a critic evaluation of its own, not the value 0.8 at the last policy token:
    #   t3: delta = 1 + 0.9*0.3 - 0.8 = 0.47     A = 0.47
    #   t2: A = 0.02 + 0.45*0.47  = 0.2315
    #   t1: A = 0.03 + 0.45*0.2315 = 0.134175
    #   t0: A = 0.04 + 0.45*0.134175 = 0.10037875
    # Rows 2-3 are the same episode again, truncated and masked: every token dropped, outputs 0.
    rewards, values, mask = _two_subtraces()
    batch = [torch.cat([x, x]) for x in (rewards, values, mask)]
    out = episode_gae(
        *batch,
        torch.tensor([0, 0, 1, 1]),
        gamma=0.9,
        lam=0.5,
        truncated=torch.tensor([True, True]),
        truncation="bootstrap",
        bootstrap_values=_t([0.3, 5.0]),
    )
    torch.testing.assert_close(
        out.advantages[:2], _t([[0.0, 0.10037875, 0.134175, 0.0], [0.0, 0.0, 0.2315, 0.47]])
    )
    with pytest.raises(ValueError, match="bootstrap_values"):
        episode_gae(*batch, torch.tensor([0, 0, 1, 1]), gamma=0.9, lam=0.5,
                    truncated=torch.tensor([True, True]), truncation="bootstrap")
    out = episode_gae(
        *batch,
        torch.tensor([0, 0, 1, 1]),
        gamma=0.9,
        lam=0.5,
        truncated=torch.tensor([False, True]),
        truncation="mask",
    )
    torch.testing.assert_close(out.advantages[:2], _t([[0.0, 0.075775, 0.0795, 0.0], [0.0, 0.0, 0.11, 0.2]]))
    assert not out.mask[2:].any() and torch.equal(out.mask[:2], mask.bool())
    assert torch.all(out.advantages[2:] == 0) and torch.all(out.returns[2:] == 0)
    # Truncated, zero: ends as if terminated (bootstrap 0), so the numbers of the terminated test above.
    out = episode_gae(*batch, torch.tensor([0, 0, 1, 1]), gamma=0.9, lam=0.5,
                      truncated=torch.tensor([True, True]), truncation="zero")
    terminated = _t([[0.0, 0.075775, 0.0795, 0.0], [0.0, 0.0, 0.11, 0.2]])
    torch.testing.assert_close(out.advantages, torch.cat([terminated, terminated]))
    assert torch.equal(out.mask, batch[2].bool())


def test_a_cut_zero_reward_episode_with_rising_values_gets_no_positive_advantage():
    # Regression: bootstrapping from the value at the last policy token, with gamma = lam = 1, made every
    # target of a cut episode reward-to-go + V_last: values rising 0.6 -> 0.9 gave A = +0.3, +0.2, +0.1, 0
    # and the last token's value loss no gradient (its target was its own value). From the state the
    # episode stopped in, worth 0.5: A_t = 0.5 - V_t and every return is 0.5.
    values = _t([[0.0, 0.6, 0.7, 0.8, 0.9]])
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    rewards = torch.zeros_like(values)
    common = dict(gamma=1.0, lam=1.0, truncated=torch.tensor([True]))
    out = episode_gae(rewards, values, mask, torch.tensor([0]), truncation="bootstrap",
                      bootstrap_values=_t([0.5]), **common)
    torch.testing.assert_close(out.advantages, _t([[0.0, -0.1, -0.2, -0.3, -0.4]]))
    torch.testing.assert_close(out.returns, _t([[0.0, 0.5, 0.5, 0.5, 0.5]]))
    # The default, zero: the cut is the failure it is, every return 0.
    out = episode_gae(rewards, values, mask, torch.tensor([0]), **common)
    torch.testing.assert_close(out.advantages, _t([[0.0, -0.6, -0.7, -0.8, -0.9]]))
    torch.testing.assert_close(out.returns, torch.zeros_like(values))


def test_episode_gae_local_mode_scales_by_later_policy_tokens():
    # Sub-trace 0 alone (V = 0.5, 0.6, r = 0, bootstrap 0):
    #   t1: delta = 0 - 0.6 = -0.6                A = -0.6
    #   t0: delta = 0.9*0.6 - 0.5 = 0.04          A = 0.04 + 0.45*(-0.6) = -0.23
    #   two policy tokens come later: scale 0.45^2 = 0.2025 -> A = [-0.046575, -0.1215]
    #   returns = A + V = [0.453425, 0.4785]
    # Sub-trace 1 alone is the end of the episode: A = [0.11, 0.2] as before, scale 0.45^0 = 1.
    rewards, values, mask = _two_subtraces()
    out = episode_gae(
        rewards,
        values,
        mask,
        torch.tensor([0, 0]),
        gamma=0.9,
        lam=0.5,
        truncated=torch.tensor([False]),
        mode="local",
    )
    torch.testing.assert_close(out.advantages, _t([[0.0, -0.046575, -0.1215, 0.0], [0.0, 0.0, 0.11, 0.2]]))
    torch.testing.assert_close(out.returns, _t([[0.0, 0.453425, 0.4785, 0.0], [0.0, 0.0, 0.81, 1.0]]))


@st.composite
def episode_batches(draw):
    """Up to 4 episodes of 1-4 sub-traces each, their rows interleaved (each episode's in order)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    num_subtraces = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    lengths = [[draw(st.integers(1, 40)) for _ in range(k)] for k in num_subtraces]
    order = draw(st.permutations([e for e, k in enumerate(num_subtraces) for _ in range(k)]))
    density = draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    episodes = []
    for lens in lengths:
        subtraces = []
        for n in lens:
            mask = (torch.rand(n, generator=g) < density).tolist()
            rewards = torch.randn(n, generator=g, dtype=torch.float64).tolist()
            values = torch.randn(n, generator=g, dtype=torch.float64).tolist()
            subtraces.append((rewards, values, mask))
        episodes.append(subtraces)
    truncated = [draw(st.booleans()) for _ in episodes]
    lam = [float(x) for x in torch.rand(len(episodes), generator=g, dtype=torch.float64)]
    return episodes, order, truncated, lam, draw(st.sampled_from([0.0, 0.9, 1.0]))


def _rows(episodes, order):
    """Pad the sub-traces into (B, T) rows in the given interleaving; return rows and their origin."""
    seen = [0] * len(episodes)
    origin = []
    for e in order:
        origin.append((e, seen[e]))
        seen[e] += 1
    T = max(len(episodes[e][k][2]) for e, k in origin)

    def pad(i, fill):
        return [list(episodes[e][k][i]) + [fill] * (T - len(episodes[e][k][i])) for e, k in origin]

    rewards, values = _t(pad(0, NAN)), _t(pad(1, NAN))
    return rewards, values, torch.tensor(pad(2, False)), torch.tensor(order), origin


@SETTINGS
@given(episode_batches(), st.sampled_from(["bootstrap", "mask", "zero"]),
       st.sampled_from(["episode", "local"]))
def test_episode_gae_equals_gae_on_the_concatenated_policy_tokens(batch, truncation, mode):
    episodes, order, truncated, lam, gamma = batch
    rewards, values, mask, index, origin = _rows(episodes, order)
    ends = [0.25 * e - 0.4 for e in range(len(episodes))]  # the states the episodes stopped in
    out = episode_gae(
        rewards,
        values,
        mask,
        index,
        gamma=gamma,
        lam=_t(lam),
        truncated=torch.tensor(truncated),
        truncation=truncation,
        mode=mode,
        bootstrap_values=_t(ends),
    )
    refs = [
        ref_episode_gae(ep, gamma, lam[e], truncated[e], truncation, mode, ends[e])
        for e, ep in enumerate(episodes)
    ]
    for b, (e, k) in enumerate(origin):
        adv, ret, keep = refs[e][k]
        n = len(adv)
        torch.testing.assert_close(out.advantages[b, :n], _t(adv))
        torch.testing.assert_close(out.returns[b, :n], _t(ret))
        assert out.mask[b, :n].tolist() == keep and not out.mask[b, n:].any()
        assert torch.all(out.advantages[b, n:] == 0)
    # The list form of one episode gives the same numbers.
    e = order[0]
    single = single_episode_gae(
        *[[_t(st_[i]) for st_ in episodes[e]] for i in range(2)],
        [torch.tensor(s[2]) for s in episodes[e]],
        gamma=gamma,
        lam=lam[e],
        truncated=truncated[e],
        truncation=truncation,
        mode=mode,
        bootstrap_value=ends[e],
    )
    for k, part in enumerate(single):
        torch.testing.assert_close(part.advantages, _t(refs[e][k][0]))
        torch.testing.assert_close(part.returns, _t(refs[e][k][1]))


@SETTINGS
@given(episode_batches(), st.sampled_from(["episode", "local"]))
def test_episode_gae_ignores_masked_positions(batch, mode):
    episodes, order, truncated, lam, gamma = batch
    rewards, values, mask, index, _ = _rows(episodes, order)
    kwargs = dict(gamma=gamma, lam=_t(lam), truncated=torch.tensor(truncated), mode=mode)
    out = episode_gae(rewards, values, mask, index, **kwargs)
    out2 = episode_gae(
        torch.where(mask, rewards, 1e6), torch.where(mask, values, -7.0), mask, index, **kwargs
    )
    assert torch.equal(out.advantages, out2.advantages) and torch.equal(out.returns, out2.returns)


# ----------------------------------------------------------------------------------------------------
# length_adaptive_lambda


def test_length_adaptive_lambda_hand_computed():
    # alpha = 1.5: 1 - 1/(1.5*l): l=0 -> -inf -> 0; l=1 -> 1 - 2/3 = 1/3; l=2 -> 1 - 1/3 = 2/3;
    # l=100 -> 1 - 1/150; l=1e9 rounds to 1 in float32, clamped just below it.
    lam = length_adaptive_lambda(torch.tensor([0, 1, 2, 100, 10**9]), 1.5)
    torch.testing.assert_close(lam[:4], torch.tensor([0.0, 1 / 3, 2 / 3, 1 - 1 / 150]))
    assert lam.dtype == torch.float32 and lam[4] < 1.0 and lam[4] > 0.9999
    # alpha = 0.05 (VAPO's setting): alpha * l <= 1 for l <= 20 gives 0; l = 40 -> 1 - 1/2 = 0.5.
    torch.testing.assert_close(length_adaptive_lambda(_t([20.0, 40.0]), 0.05), _t([0.0, 0.5]))
    torch.testing.assert_close(length_adaptive_lambda(4, 1.0), torch.tensor(0.75))


# ----------------------------------------------------------------------------------------------------
# GRPO


def test_grpo_advantages_hand_computed():
    # Group "a": rewards [1, 0, 0, 0], mean 0.25, deviations [0.75, -0.25, -0.25, -0.25];
    #   sample variance = (0.5625 + 3*0.0625) / (4 - 1) = 0.25, std 0.5 -> A = dev / (0.5 + eps)
    #   = [1.5, -0.5, -0.5, -0.5] (up to eps).
    # Group "b": three equal rewards 0.1 (their float mean is not exactly 0.1) -> exactly 0.
    # Group "c": one episode -> exactly 0.
    rewards = _t([1.0, 0.1, 0.0, 0.1, 0.0, 0.0, 0.1, 2.0])
    ids = ["a", "b", "a", "b", "a", "a", "b", "c"]
    dev = _t([0.75, 0.0, -0.25, 0.0, -0.25, -0.25, 0.0, 0.0])
    adv = grpo_advantages(rewards, ids, eps=1e-6)
    torch.testing.assert_close(adv, dev / (0.5 + 1e-6))
    assert torch.all(adv[[1, 3, 6, 7]] == 0)
    # Dr. GRPO: no std division.
    torch.testing.assert_close(grpo_advantages(rewards, ids, scale_by_std=False), dev)
    # Integer ids, as a list or a tensor, group the same way.
    ints = [7, 3, 7, 3, 7, 7, 3, -1]
    torch.testing.assert_close(grpo_advantages(rewards, ints), adv)
    torch.testing.assert_close(grpo_advantages(rewards, torch.tensor(ints)), adv)


def test_grpo_advantages_are_zero_mean_and_unit_sample_std_per_group():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(12, generator=g, dtype=torch.float64)
    ids = [i % 3 for i in range(12)]
    adv = grpo_advantages(rewards, ids, eps=1e-12)
    for k in range(3):
        group = adv[k::3]
        torch.testing.assert_close(group.mean(), _t(0.0))
        torch.testing.assert_close(group.std(), _t(1.0))


def test_broadcast_to_tokens_hand_computed():
    # Rows 0 and 2 belong to episode 1 (A = -2), row 1 to episode 0 (A = 1); 0 off policy tokens.
    out = broadcast_to_tokens(
        _t([1.0, -2.0]), torch.tensor([1, 0, 1]), torch.tensor([[1, 0], [1, 1], [0, 1]])
    )
    torch.testing.assert_close(out, _t([[-2.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))


# ----------------------------------------------------------------------------------------------------
# whiten


def test_whiten_hand_computed():
    # Mask-1 entries 1, 2, 3: mean 2, biased variance (1 + 0 + 1) / 3 = 2/3.
    x = _t([[1.0, 2.0, NAN], [3.0, 100.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s = math.sqrt(2 / 3 + 1e-8)
    torch.testing.assert_close(whiten(x, mask), _t([[-1 / s, 0.0, 0.0], [1 / s, 0.0, 0.0]]))
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False), _t([[1 / s, 2 / s, 0.0], [3 / s, 0.0, 0.0]])
    )


def test_whiten_edge_cases():
    x = _t([[5.0, NAN]])
    # No mask-1 entry: all zeros, no NaN. One entry: variance 0, (x - mean) = 0 -> 0.
    assert torch.equal(whiten(x, torch.zeros(1, 2)), _t([[0.0, 0.0]]))
    assert torch.equal(whiten(x, torch.tensor([[1, 0]])), _t([[0.0, 0.0]]))
    # Works on any shape, e.g. one advantage per episode.
    torch.testing.assert_close(whiten(_t([1.0, 3.0]), torch.tensor([True, True]), eps=1e-12), _t([-1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument


X = torch.zeros(2, 3)
M = torch.ones(2, 3)
NO = torch.tensor([False])
BAD_CALLS = [
    ("values", lambda: gae(X, torch.zeros(2, 4), M, gamma=1.0, lam=1.0)),
    ("rewards", lambda: gae(torch.zeros(3), X, M, gamma=1.0, lam=1.0)),
    ("mask", lambda: gae(X, X, torch.tensor([[0, 2, 1], [1, 1, 1]]), gamma=1.0, lam=1.0)),
    ("rewards", lambda: gae(X, X, torch.ones(2, 4), gamma=1.0, lam=1.0)),  # mask sets the shape
    ("gamma", lambda: gae(X, X, M, gamma=1.5, lam=1.0)),
    ("lam", lambda: gae(X, X, M, gamma=1.0, lam=-0.1)),
    ("lam", lambda: gae(X, X, M, gamma=1.0, lam=torch.ones(3))),
    ("lam", lambda: gae(X, X, M, gamma=1.0, lam=torch.tensor([0.5, 2.0]))),
    ("bootstrap", lambda: gae(X, X, M, gamma=1.0, lam=1.0, bootstrap=torch.zeros(3))),
    ("rewards", lambda: gae(torch.zeros(2, 3, dtype=torch.long), X, M, gamma=1.0, lam=1.0)),
    ("episode_index", lambda: episode_gae(X, X, M, torch.tensor([0, 1]), gamma=1.0, lam=1.0, truncated=NO)),
    ("episode_index", lambda: episode_gae(X, X, M, torch.tensor([0]), gamma=1.0, lam=1.0, truncated=NO)),
    ("mask", lambda: episode_gae(X, X, M * 0.5, torch.tensor([0, 0]), gamma=1.0, lam=1.0, truncated=NO)),
    (
        "truncation",
        lambda: episode_gae(X, X, M, torch.tensor([0, 0]), gamma=1, lam=1, truncated=NO, truncation="x"),
    ),
    ("mode", lambda: episode_gae(X, X, M, torch.tensor([0, 0]), gamma=1, lam=1, truncated=NO, mode="global")),
    ("lam", lambda: episode_gae(X, X, M, torch.tensor([0, 0]), gamma=1, lam=torch.ones(2), truncated=NO)),
    (
        "truncated",
        lambda: episode_gae(X, X, M, torch.tensor([0, 0]), gamma=1, lam=1, truncated=torch.zeros(1)),
    ),
    ("values", lambda: single_episode_gae([X[0]], [X[0, :2]], [M[0]], gamma=1, lam=1, truncated=False)),
    ("rewards", lambda: single_episode_gae([], [], [M[0]], gamma=1, lam=1, truncated=False)),
    ("alpha", lambda: length_adaptive_lambda(torch.tensor([3]), 0.0)),
    ("num_policy_tokens", lambda: length_adaptive_lambda(torch.tensor([-1]), 1.0)),
    ("group_ids", lambda: grpo_advantages(torch.zeros(3), ["a", "b"])),
    ("group_ids", lambda: grpo_advantages(torch.zeros(3), "abc")),
    ("group_ids", lambda: grpo_advantages(torch.zeros(2), torch.tensor([0.5, 1.0]))),
    ("rewards", lambda: grpo_advantages(torch.zeros(2, 2), [0, 1])),
    ("eps", lambda: grpo_advantages(torch.zeros(2), [0, 1], eps=0.0)),
    ("episode_index", lambda: broadcast_to_tokens(torch.zeros(2), torch.tensor([0, 2]), M)),
    ("mask", lambda: whiten(X, torch.ones(3, 2))),
    ("mask", lambda: whiten(X, torch.full((2, 3), 3))),
    ("x", lambda: whiten(torch.zeros(2, 3, dtype=torch.long), M)),
]


@pytest.mark.parametrize(("name", "call"), BAD_CALLS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
