"""Losses: hand-computed cases, masking, micro-batch invariance, and logits -> log-probs/entropy."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.losses import (
    AGGREGATION_MODES,
    aggregate,
    entropy_from_logits,
    kl,
    logprobs_and_entropy,
    policy_loss,
    tis_weights,
    token_logprobs,
    value_loss,
)

NAN, INF = float("nan"), float("inf")
LN2 = math.log(2.0)


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# policy_loss


def _policy_case():
    """One row of five policy tokens with old log-prob -1 and ratios 2, 2, 0.5, 0.5, 1.1, then a masked
    token holding NaN/inf everywhere."""
    ratios = [2.0, 2.0, 0.5, 0.5, 1.1]
    old = _t([[-1.0] * 5 + [NAN]])
    new = _t([[-1.0 + math.log(r) for r in ratios] + [INF]]).requires_grad_()
    adv = _t([[1.0, -1.0, 1.0, -1.0, 2.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return new, old, adv, mask


def test_policy_loss_hand_computed_both_signs_outside_clip():
    new, old, adv, mask = _policy_case()
    loss, metrics = policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # loss = -min(r*A, clip(r, 0.8, 1.28)*A):
    #   r=2,   A=+1: -min(2, 1.28)     = -1.28  (clipped)
    #   r=2,   A=-1: -min(-2, -1.28)   =  2.0
    #   r=0.5, A=+1: -min(0.5, 0.8)    = -0.5
    #   r=0.5, A=-1: -min(-0.5, -0.8)  =  0.8   (clipped)
    #   r=1.1, A=+2: -min(2.2, 2.2)    = -2.2
    #   masked (NaN/inf inputs)        =  0
    torch.testing.assert_close(loss.detach(), _t([[-1.28, 2.0, -0.5, 0.8, -2.2, 0.0]]))
    # d loss / d logprob = -r*A where unclipped (d r / d logprob = r), 0 where clipped or masked:
    #   [0, 2, -0.5, 0, -2.2, 0]
    loss.sum().backward()
    torch.testing.assert_close(new.grad, _t([[0.0, 2.0, -0.5, 0.0, -2.2, 0.0]]))
    # clipfrac = 2/5; approx_kl = mean(r - 1 - ln r)
    #   = (2*(1 - ln 2) + 2*(-0.5 + ln 2) + (0.1 - ln 1.1)) / 5 = (1 + 0.1 - ln 1.1) / 5
    expected = {
        "clipfrac": 0.4,
        "dual_clipfrac": 0.0,
        "approx_kl": (1.1 - math.log(1.1)) / 5,
        "ratio_mean": 6.1 / 5,  # (2 + 2 + 0.5 + 0.5 + 1.1) / 5
        "ratio_max": 2.0,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad
        assert metrics[key].item() == pytest.approx(value), key


def test_policy_loss_dual_clip_caps_negative_advantages_only():
    old = _t([[-1.0, -1.0, -1.0, -1.0]])
    new = _t([[-1.0 + math.log(5.0), -1.0 + math.log(5.0), -1.0 + LN2, -1.0 + math.log(0.5)]])
    new.requires_grad_()
    adv = _t([[-1.0, 1.0, -1.0, -2.0]])
    loss, metrics = policy_loss(new, old, adv, torch.ones(1, 4, dtype=torch.bool),
                                clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # r=5,   A=-1: -min(-5, -1.28) = 5 > cap 3*1 = 3          -> 3 (dual clip)
    # r=5,   A=+1: -min(5, 1.28)   = -1.28 (A > 0: no dual)   -> -1.28
    # r=2,   A=-1: -min(-2, -1.28) = 2 < 3                    -> 2
    # r=0.5, A=-2: -min(-1, -1.6)  = 1.6 < 6                  -> 1.6
    torch.testing.assert_close(loss.detach(), _t([[3.0, -1.28, 2.0, 1.6]]))
    loss.sum().backward()
    # Only the r=2 token is unclipped: d/dlogprob = -r*A = 2.
    torch.testing.assert_close(new.grad, _t([[0.0, 0.0, 2.0, 0.0]]))
    assert metrics["dual_clipfrac"].item() == pytest.approx(0.25)  # 1 of 4
    assert metrics["clipfrac"].item() == pytest.approx(0.5)  # r=5,A=+1 and r=0.5,A=-2


def test_policy_loss_huge_log_ratio_stays_finite():
    # log ratio 1000 would overflow exp; it is clamped to 20, and the token is clipped (A > 0) or
    # dual-clipped (A < 0), so the loss is finite and the gradient 0.
    new = _t([[0.0, 0.0]]).requires_grad_()
    old = _t([[-1000.0, -1000.0]])
    loss, _ = policy_loss(new, old, _t([[1.0, -1.0]]), torch.ones(1, 2), clip_low=0.2, clip_high=0.2,
                          dual_clip=3.0)
    torch.testing.assert_close(loss.detach(), _t([[-1.2, 3.0]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.zeros_like(new))


def test_policy_loss_all_masked_row_is_zero_and_finite():
    new = _t([[NAN, INF], [-1.0, -1.0]]).requires_grad_()
    old = _t([[-INF, NAN], [-1.0, -1.0]])
    adv = _t([[NAN, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[0, 0], [0, 0]])
    loss, metrics = policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=2.0)
    assert torch.equal(loss, torch.zeros(2, 2, dtype=torch.float64))
    aggregate(loss, mask).backward()
    assert torch.equal(new.grad, torch.zeros(2, 2, dtype=torch.float64))
    assert all(v.item() == 0.0 for v in metrics.values())


def test_masked_values_do_not_change_output_or_gradient():
    new, old, adv, mask = _policy_case()
    clean = [x.detach().clone() for x in (new, old, adv)]
    for x in clean:
        x[0, 5] = 0.0
    clean[0].requires_grad_()
    grads = []
    for lp, o, a in ((new, old, adv), tuple(clean)):
        loss, _ = policy_loss(lp, o, a, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        total = aggregate(loss + kl(lp, o, "k3", mask=mask), mask)
        total.backward()
        grads.append((total.detach(), lp.grad))
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------------
# value_loss


def test_value_loss_hand_computed():
    values = _t([[1.0, 0.6, 0.0, 2.0, NAN]]).requires_grad_()
    old = _t([[0.5, 0.5, 0.5, 0.0, NAN]])
    returns = _t([[1.0, 2.0, 1.0, 0.0, INF]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.2)
    # V_clip = old + clip(V - old, -0.2, 0.2); loss = 0.5 * max((V-R)^2, (V_clip-R)^2)
    #   V=1,   old=0.5, R=1: V_clip=0.7; max(0, 0.09)     = 0.09 -> 0.045 (clipped term wins)
    #   V=0.6, old=0.5, R=2: V_clip=0.6; max(1.96, 1.96)  = 1.96 -> 0.98
    #   V=0,   old=0.5, R=1: V_clip=0.3; max(1, 0.49)     = 1    -> 0.5
    #   V=2,   old=0,   R=0: V_clip=0.2; max(4, 0.04)     = 4    -> 2.0
    torch.testing.assert_close(loss.detach(), _t([[0.045, 0.98, 0.5, 2.0, 0.0]]))
    loss.sum().backward()
    # Gradient V - R where the unclipped term wins, 0 where the clipped one does or masked.
    torch.testing.assert_close(values.grad, _t([[0.0, -1.4, -1.0, 2.0, 0.0]]))
    assert metrics["clipfrac"].item() == pytest.approx(0.25)
    unclipped, metrics = value_loss(values, old, returns, mask, clip=None)
    # 0.5 * (V - R)^2 = [0, 0.98, 0.5, 2.0]
    torch.testing.assert_close(unclipped.detach(), _t([[0.0, 0.98, 0.5, 2.0, 0.0]]))
    assert metrics["clipfrac"].item() == 0.0


# ----------------------------------------------------------------------------------------------------
# kl


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # d = log pi_ref - log pi = [-1, 1, 0]
        ("k1", [1.0, -1.0, 0.0]),  # -d
        ("k2", [0.5, 0.5, 0.0]),  # 0.5 d^2
        ("k3", [math.exp(-1.0), math.e - 2.0, 0.0]),  # e^d - d - 1: e^-1 + 1 - 1, e - 1 - 1, 0
    ],
)
def test_kl_each_kind(kind, expected):
    logprobs, ref = _t([[-1.0, -2.0, -0.5]]), _t([[-2.0, -1.0, -0.5]])
    torch.testing.assert_close(kl(logprobs, ref, kind), _t([expected]))


def test_kl_clamp_and_mask():
    logprobs, ref = _t([[-31.0, -0.5, NAN]]), _t([[-1.0, -0.5, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    # d = 30 is clamped to 20: k1 = -20, k2 = 200, k3 = min(e^20 - 21, 10) = 10 (or e^20 - 21 uncapped).
    torch.testing.assert_close(kl(logprobs, ref, "k1", mask=mask), _t([[-20.0, 0.0, 0.0]]))
    torch.testing.assert_close(kl(logprobs, ref, "k2", mask=mask), _t([[200.0, 0.0, 0.0]]))
    torch.testing.assert_close(kl(logprobs, ref, "k3", mask=mask), _t([[10.0, 0.0, 0.0]]))
    uncapped = kl(logprobs, ref, "k3", mask=mask, k3_max=None)
    torch.testing.assert_close(uncapped, _t([[math.exp(20.0) - 21.0, 0.0, 0.0]]))


def test_kl_k3_gradient():
    # d k3 / d log pi = d/dlp (e^(ref-lp) - (ref-lp) - 1) = -e^d + 1; d = 1 -> 1 - e
    logprobs = _t([[-2.0]]).requires_grad_()
    kl(logprobs, _t([[-1.0]]), "k3").sum().backward()
    torch.testing.assert_close(logprobs.grad, _t([[1.0 - math.e]]))


# ----------------------------------------------------------------------------------------------------
# aggregate

PER_TOKEN = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [NAN, INF, 9.0, 0.0]]
MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        # row sums 6, 11, 0 (row 3 has no token: not a sequence); counts 3, 2, 0; T = 4
        ("token-mean", {}, 17 / 5),
        ("token-mean", {"num_tokens": 10}, 17 / 10),
        ("seq-mean-token-mean", {}, (6 / 3 + 11 / 2) / 2),  # = 3.75
        ("seq-mean-token-mean", {"num_seqs": 4}, (6 / 3 + 11 / 2) / 4),
        ("seq-mean-token-sum", {}, (6 + 11) / 2),
        ("seq-mean-token-sum-norm", {}, 17 / (2 * 4)),  # horizon defaults to T
        ("seq-mean-token-sum-norm", {"num_seqs": 5, "horizon": 10}, 17 / (5 * 10)),
        ("seq-mean-token-sum-norm", {"num_seqs": torch.tensor(5), "horizon": torch.tensor(10.0)}, 17 / 50),
    ],
)
def test_aggregate_each_mode(mode, kwargs, expected):
    per_token = _t(PER_TOKEN).requires_grad_()
    out = aggregate(per_token, torch.tensor(MASK), mode, **kwargs)
    assert out.dim() == 0 and out.item() == pytest.approx(expected)
    out.backward()
    assert torch.isfinite(per_token.grad).all()
    assert per_token.grad[2].abs().sum() == 0 and per_token.grad[0, 3] == 0


def test_seq_mean_counts_an_episode_once_however_it_was_compacted():
    # Two episodes of 320 policy tokens: one compacted into windows of 300 and 20 (rows 0 and 1), one
    # not (row 2). The gradient of the loss with respect to a per-token loss of 1 is each token's weight.
    mask = torch.zeros(3, 320, dtype=torch.bool)
    mask[0, :300], mask[1, :20], mask[2, :] = True, True, True
    seq_tokens = torch.tensor([320, 320, 320])

    def weights(mode, **kwargs):
        per_token = torch.ones(3, 320, dtype=torch.float64, requires_grad=True)
        aggregate(per_token, mask, mode, **kwargs).backward()
        g = per_token.grad
        return g[:2].sum().item(), g[2].sum().item(), (g[1, 0] / g[0, 0]).item()

    # per episode: 1/2 each, and a token of the short window weighs what one of the long window does
    assert weights("seq-mean-token-mean", seq_tokens=seq_tokens) == pytest.approx((0.5, 0.5, 1.0))
    # seq-mean-token-sum: 1 / num_seqs per token, num_seqs = 2 episodes (not 3 rows)
    assert weights("seq-mean-token-sum", seq_tokens=seq_tokens)[:2] == pytest.approx((320 / 2, 320 / 2))
    assert weights("seq-mean-token-sum-norm", seq_tokens=seq_tokens, horizon=400)[:2] == pytest.approx(
        (320 / 800, 320 / 800)
    )
    # per sub-trace (the named comparison mode, and the default without seq_tokens): 2/3 against 1/3,
    # and a token of the 20-token window weighs 300 / 20 = 15 times one of the 300-token window
    for kwargs in ({"seq_tokens": seq_tokens}, {}):
        assert weights("subtrace-mean-token-mean", **kwargs) == pytest.approx((2 / 3, 1 / 3, 15.0))
    assert weights("seq-mean-token-mean") == pytest.approx((2 / 3, 1 / 3, 15.0))


def test_aggregate_refuses_bad_seq_tokens():
    mask = torch.tensor([[1, 1, 0]])
    with pytest.raises(ValueError, match="seq_tokens"):
        aggregate(torch.ones(1, 3), mask, "seq-mean-token-mean", seq_tokens=torch.tensor([1]))  # < 2 here
    with pytest.raises(ValueError, match="seq_tokens"):
        aggregate(torch.ones(1, 3), mask, "seq-mean-token-mean", seq_tokens=torch.tensor([2, 2]))


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregate_all_masked_is_zero(mode):
    per_token = _t([[NAN, 1.0], [2.0, INF]]).requires_grad_()
    out = aggregate(per_token, torch.zeros(2, 2, dtype=torch.bool), mode)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(per_token.grad, torch.zeros(2, 2, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------
# Micro-batch invariance (float64)


def _loss_terms(lp, old, adv, ref, mask, mode, **denominators):
    per_token, _ = policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    per_token = per_token + 0.1 * kl(lp, ref, "k3", mask=mask)
    return aggregate(per_token, mask, mode, **denominators)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 7),
    length=st.integers(1, 9),
    mode=st.sampled_from(AGGREGATION_MODES),
    cuts=st.lists(st.integers(1, 6), max_size=4),
    by_seq=st.booleans(),
)
def test_micro_batches_with_global_denominators_match_full_batch(seed, batch, length, mode, cuts, by_seq):
    g = torch.Generator().manual_seed(seed)
    lp = -3.0 * torch.rand(batch, length, generator=g, dtype=torch.float64)
    old = lp + 0.6 * torch.randn(batch, length, generator=g, dtype=torch.float64)  # ratios in and out
    ref = lp + 0.5 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    adv = torch.randn(batch, length, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) < 0.6
    mask[torch.rand(batch, generator=g) < 0.25] = False  # some rows have no policy token
    denominators = {"num_tokens": mask.sum(), "num_seqs": int(mask.any(dim=1).sum()), "horizon": 12}
    seq_tokens = None
    if by_seq:  # rows are parts of sequences (sub-traces of episodes); a micro-batch may split a sequence
        seq = torch.randint(0, batch, (batch,), generator=g)
        counts = torch.zeros(batch, dtype=torch.long).index_add_(0, seq, mask.sum(dim=1))
        seq_tokens = counts[seq]
        if mode != "subtrace-mean-token-mean":
            denominators["num_seqs"] = int((counts > 0).sum())

    full_lp = lp.clone().requires_grad_()
    full = _loss_terms(full_lp, old, adv, ref, mask, mode, seq_tokens=seq_tokens, **denominators)
    full.backward()

    bounds = sorted({min(c, batch) for c in cuts} | {0, batch})
    total, grad = torch.zeros((), dtype=torch.float64), torch.zeros_like(lp)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        # Each micro-batch is padded only as far as its own last policy token, as a packer would.
        cols = mask[lo:hi].any(dim=0).nonzero()
        width = int(cols.max()) + 1 if len(cols) else 1
        part = lp[lo:hi, :width].clone().requires_grad_()
        loss = _loss_terms(part, old[lo:hi, :width], adv[lo:hi, :width], ref[lo:hi, :width],
                           mask[lo:hi, :width], mode, **denominators,
                           seq_tokens=None if seq_tokens is None else seq_tokens[lo:hi])
        loss.backward()
        total += loss.detach()
        grad[lo:hi, :width] = part.grad
    torch.testing.assert_close(total, full.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, full_lp.grad, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_logprobs_and_entropy_match_categorical(dtype, chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = (3.0 * torch.randn(2, 5, 11, generator=g)).to(dtype)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    reference = torch.distributions.Categorical(logits=logits.float())
    logprobs, entropy = logprobs_and_entropy(logits, ids, chunk_size=chunk_size)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    torch.testing.assert_close(logprobs, reference.log_prob(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, reference.entropy(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(token_logprobs(logits, ids, chunk_size=chunk_size), logprobs)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), entropy)


def test_chunked_gradients_match_unchunked():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 7, 13, generator=g)
    ids = torch.randint(0, 13, (3, 7), generator=g)
    grads = []
    for chunk_size in (None, 3):
        logits = base.clone().requires_grad_()
        logprobs, entropy = logprobs_and_entropy(logits, ids, chunk_size=chunk_size)
        (logprobs.sum() + 0.3 * entropy.sum()).backward()
        grads.append(logits.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_no_shift_is_applied():
    # Position t is scored by logits[:, t]: a one-hot logit row puts almost all mass on its own id.
    logits = torch.full((1, 3, 4), -30.0)
    logits[0, torch.arange(3), torch.tensor([2, 0, 3])] = 30.0
    logprobs = token_logprobs(logits, torch.tensor([[2, 0, 3]]))
    torch.testing.assert_close(logprobs, torch.zeros(1, 3), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Bad input names the argument


def _ok():
    return _t([[-1.0, -0.5]]), torch.tensor([[1, 0]])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda x, m: policy_loss(x, x[:, :1], x, m, clip_low=0.2, clip_high=0.2), "old_logprobs"),
        (lambda x, m: policy_loss(x, x, x[0], m, clip_low=0.2, clip_high=0.2), "advantages"),
        (lambda x, m: policy_loss(x, x, x, m * 2, clip_low=0.2, clip_high=0.2), "mask"),
        (lambda x, m: policy_loss(x, x, x, m * 0.5, clip_low=0.2, clip_high=0.2), "mask"),
        (lambda x, m: policy_loss(x, x, x, m[0], clip_low=0.2, clip_high=0.2), "mask"),
        (lambda x, m: policy_loss(x, x, x, m, clip_low=1.0, clip_high=0.2), "clip_low"),
        (lambda x, m: policy_loss(x, x, x, m, clip_low=0.2, clip_high=-0.1), "clip_high"),
        (lambda x, m: policy_loss(x, x, x, m, clip_low=0.2, clip_high=0.2, dual_clip=1.0), "dual_clip"),
        (lambda x, m: policy_loss(x.long(), x, x, m, clip_low=0.2, clip_high=0.2), "logprobs"),
        (lambda x, m: value_loss(x, x, x.T, m, clip=0.2), "returns"),
        (lambda x, m: value_loss(x, x[:, :1], x, m, clip=0.2), "old_values"),
        (lambda x, m: value_loss(x, x, x, m + 1, clip=0.2), "mask"),
        (lambda x, m: value_loss(x, x, x, m, clip=0.0), "clip"),
        (lambda x, m: kl(x, x, "k4"), "kind"),
        (lambda x, m: kl(x, x[:, :1], "k1"), "ref_logprobs"),
        (lambda x, m: kl(x, x, "k3", mask=m * 3), "mask"),
        (lambda x, m: kl(x, x, "k3", k3_max=0.0), "k3_max"),
        (lambda x, m: aggregate(x, m, "seq-mean"), "mode"),
        (lambda x, m: aggregate(x[:, :1], m), "per_token"),
        (lambda x, m: aggregate(x, m - 1), "mask"),
        (lambda x, m: aggregate(x, m, num_tokens=-1), "num_tokens"),
        (lambda x, m: aggregate(x, m, num_seqs=torch.ones(2)), "num_seqs"),
        (lambda x, m: aggregate(x, m, "seq-mean-token-sum-norm", horizon=0), "horizon"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, name):
    x, m = _ok()
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call(x, m)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"logits": torch.zeros(2, 3)}, "logits"),
        ({"logits": torch.zeros(1, 2, 3, dtype=torch.long)}, "logits"),
        ({"token_ids": torch.zeros(1, 3, dtype=torch.long)}, "token_ids"),
        ({"token_ids": torch.zeros(1, 2)}, "token_ids"),
        ({"token_ids": torch.tensor([[0, 3]])}, "token_ids"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_logits_bad_input_names_argument(kwargs, name):
    args = {"logits": torch.zeros(1, 2, 3), "token_ids": torch.zeros(1, 2, dtype=torch.long)} | kwargs
    with pytest.raises(ValueError, match=rf"^{name}:"):
        logprobs_and_entropy(**args)


def test_tis_weights_hand_computed():
    # log pi_old - log mu = 0.5 -> e^0.5 = 1.6487, capped at 1.5; -1 -> e^-1 = 0.3679; mask 0 -> 0.
    learner = torch.tensor([[-1.0, -2.0, -3.0]])
    behaviour = torch.tensor([[-1.5, -1.0, NAN]])
    w = tis_weights(learner, behaviour, torch.tensor([[1, 1, 0]]), cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, math.exp(-1.0), 0.0]]))
    with pytest.raises(ValueError, match="cap"):
        tis_weights(learner, behaviour, torch.ones(1, 3), cap=0.5)
