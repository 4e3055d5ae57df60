"""Batching: rows from episodes, collation, the t-1 alignment of log-probs and values against a direct
computation, masked critic outputs never reaching an advantage, packing (hand cases and hypothesis
properties), and micro-batches summing to the mini-batch loss and gradient. Tiny random Qwen2 models,
offline."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from agentrl.advantages import episode_gae
from agentrl.batch import (
    Batch,
    MicroBatch,
    Row,
    collate,
    pack,
    padding_fraction,
    policy_row_count,
    policy_token_count,
    rows_from_episodes,
    set_fields,
    unpad,
    update_rows,
)
from agentrl.forward import (
    common_prefix_length,
    critic_values,
    evaluate_logprobs,
    evaluate_values,
    policy_logprobs,
    prefix_groups,
    shared_prefix_forward,
)
from agentrl.losses import aggregate, policy_loss, value_loss
from agentrl.types import Episode, SubTrace

VOCAB = 64
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


def _config() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )


class TinyCritic(torch.nn.Module):
    """A ValueModel: a Qwen2 backbone and a scalar head; ``out[:, s]`` is V(state after tokens 0..s)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.backbone = Qwen2Model(config)
        self.head = torch.nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1)


@pytest.fixture(scope="module")
def policy() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(_config()).eval()


@pytest.fixture(scope="module")
def critic() -> TinyCritic:
    torch.manual_seed(1)
    return TinyCritic(_config()).eval()


def _sub_trace(g: torch.Generator, length: int, prompt: int) -> SubTrace:
    """A prompt, then alternating policy turns and observations; a reward of 1 on the last policy token."""
    mask = [0] * prompt
    while len(mask) < length:
        turn = int(torch.randint(1, 5, (1,), generator=g))
        obs = int(torch.randint(1, 4, (1,), generator=g))
        mask += [1] * turn + [0] * obs
    mask = mask[:length]
    ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
    logprobs = [-float(torch.rand(1, generator=g)) * 3 - 0.01 if m else None for m in mask]
    rewards = [0.0] * length
    last = max((i for i, m in enumerate(mask) if m), default=None)
    if last is not None:
        rewards[last] = 1.0
    return SubTrace(tuple(ids), tuple(mask), tuple(logprobs), tuple(rewards))


def _episodes(seed: int = 0) -> list[Episode]:
    """Three episodes: one of two sub-traces (compacted), one truncated, one short; lengths 5..23."""
    g = torch.Generator().manual_seed(seed)
    spec = [((23, 4), (14, 6)), ((9, 3),), ((5, 2),)]
    out = []
    for e, subs in enumerate(spec):
        truncated = e == 1
        out.append(
            Episode(
                sub_traces=tuple(_sub_trace(g, n, p) for n, p in subs),
                task_id=f"t{e}",
                group_id="g",
                end="truncated" if truncated else "terminated",
                truncation_reason="max_turns" if truncated else None,
            )
        )
    return out


def _row(n: int = 4, **changes) -> Row:
    fields = dict(
        episode_index=0,
        sub_trace_index=0,
        token_ids=torch.arange(n),
        loss_mask=torch.tensor([0] + [1] * (n - 1)),
        old_logprobs=-torch.ones(n),
        rewards=torch.zeros(n),
    )
    fields.update(changes)
    return Row(**fields)


# ----------------------------------------------------------------------------------------------------
# Rows and collation


def test_rows_from_episodes_keep_order_indices_and_values():
    episodes = _episodes()
    rows = rows_from_episodes(episodes)
    assert [(r.episode_index, r.sub_trace_index) for r in rows] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    for row in rows:
        sub = episodes[row.episode_index].sub_traces[row.sub_trace_index]
        assert row.token_ids.tolist() == list(sub.token_ids)
        assert row.loss_mask.tolist() == [bool(m) for m in sub.loss_mask]
        expected = [0.0 if lp is None else lp for lp in sub.logprobs]
        torch.testing.assert_close(row.old_logprobs, torch.tensor(expected))
        assert row.rewards.tolist() == list(sub.rewards)
        assert row.old_values is None and row.advantages is None
    assert policy_token_count(rows) == sum(e.num_policy_tokens for e in episodes)
    assert policy_token_count(rows, [1, 3]) == rows[1].num_policy_tokens + rows[3].num_policy_tokens
    assert policy_row_count(rows) == 4


def test_collate_pads_right_and_zeroes_masked_fields():
    rows = [
        _row(3, old_logprobs=torch.tensor([-5.0, -1.0, -2.0])),
        _row(5, episode_index=1, sub_trace_index=2, loss_mask=torch.tensor([0, 1, 0, 1, 1])),
    ]
    rows = set_fields(rows, advantages=[torch.full((3,), 7.0), torch.full((5,), 9.0)])
    batch = collate(rows, [1, 0], pad_id=63)
    assert batch.shape == (2, 5)
    assert batch.input_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 63, 63]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.loss_mask.tolist() == [[False, True, False, True, True], [False, True, True, False, False]]
    # Token 0 is a prompt token, so the -5 stored there never reaches the batch; padding is 0.
    assert batch.old_logprobs.tolist() == [[0, -1, 0, -1, -1], [0, -1, -2, 0, 0]]
    assert batch.advantages.tolist() == [[0, 9, 0, 9, 9], [0, 7, 7, 0, 0]]
    assert batch.old_values is None and batch.returns is None and batch.ref_logprobs is None
    assert batch.row_index.tolist() == [1, 0]
    assert batch.episode_index.tolist() == [1, 0] and batch.sub_trace_index.tolist() == [2, 0]
    assert batch.lengths.tolist() == [5, 3]
    assert int(batch.num_policy_tokens) == 5
    assert [x.tolist() for x in unpad(batch.input_ids, batch)] == [[0, 1, 2, 3, 4], [0, 1, 2]]


def test_collate_errors_name_the_field():
    with pytest.raises(ValueError, match="^rows: expected at least one row"):
        collate([])
    with pytest.raises(ValueError, match="^indices: expected at least one"):
        collate([_row()], [])
    with pytest.raises(ValueError, match=r"^indices: expected ints in \[0, 1\)"):
        collate([_row()], [1])
    with pytest.raises(ValueError, match="^rows: item 0 is a str"):
        collate(["not a row"])
    with pytest.raises(ValueError, match="^pad_id"):
        collate([_row()], pad_id=-1)
    rows = [_row(3), _row(4, old_values=torch.zeros(4))]
    with pytest.raises(ValueError, match="^old_values: set on 1 of 2 rows"):
        collate(rows)


@pytest.mark.parametrize("field", ["loss_mask", "old_logprobs", "rewards", "advantages", "returns"])
def test_row_length_mismatch_names_the_field(field):
    bad = torch.zeros(3, dtype=torch.long if field == "loss_mask" else torch.float32)
    with pytest.raises(ValueError, match=rf"^{field}: length 3 != len\(token_ids\) 4 \(episode 0"):
        _row(4, **{field: bad})


def test_row_rejects_bad_records():
    with pytest.raises(ValueError, match="^loss_mask: token 0 is marked as a policy token"):
        _row(3, loss_mask=torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="^token_ids: a row needs at least one token"):
        _row(0, loss_mask=torch.zeros(0))
    with pytest.raises(ValueError, match="^token_ids: expected an integer tensor"):
        _row(3, token_ids=torch.zeros(3))
    with pytest.raises(ValueError, match="^loss_mask: expected only 0 and 1"):
        _row(3, loss_mask=torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="^rewards: expected a floating-point"):
        _row(3, rewards=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="^episode_index"):
        _row(3, episode_index=-1)
    with pytest.raises(ValueError, match=r"^advantages: 1 tensors != 2 rows"):
        set_fields([_row(), _row()], advantages=[torch.zeros(4)])


# ----------------------------------------------------------------------------------------------------
# Alignment of log-probs and values


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_for_token_t_come_from_logits_at_t_minus_1(policy, temperature):
    rows = rows_from_episodes(_episodes())
    batch = collate(rows, pad_id=5)
    with torch.no_grad():
        out = policy_logprobs(policy, batch, temperature=temperature, with_entropy=True)
        for b, row in enumerate(rows):
            n = row.num_tokens
            logp = torch.log_softmax(policy(input_ids=row.token_ids[None]).logits[0] / temperature, dim=-1)
            direct = torch.zeros(n)
            direct_entropy = torch.zeros(n)
            for t in range(1, n):
                if row.loss_mask[t]:
                    direct[t] = logp[t - 1, row.token_ids[t]]
                    direct_entropy[t] = -(logp[t - 1].exp() * logp[t - 1]).sum()
            torch.testing.assert_close(out.logprobs[b, :n], direct, rtol=0, atol=1e-5)
            torch.testing.assert_close(out.entropy[b, :n], direct_entropy, rtol=0, atol=1e-5)
            # The row alone (no padding) gives the same numbers as the row inside the padded batch.
            alone = policy_logprobs(policy, collate([row]), temperature=temperature).logprobs[0]
            torch.testing.assert_close(out.logprobs[b, :n], alone, rtol=0, atol=1e-5)
    assert torch.equal(out.logprobs[~batch.loss_mask], torch.zeros(int((~batch.loss_mask).sum())))
    assert torch.equal(out.entropy[~batch.loss_mask], torch.zeros(int((~batch.loss_mask).sum())))


def test_values_for_token_t_come_from_critic_output_at_t_minus_1(critic):
    rows = rows_from_episodes(_episodes())
    batch = collate(rows)
    with torch.no_grad():
        values = critic_values(critic, batch)
        for b, row in enumerate(rows):
            n = row.num_tokens
            raw = critic(row.token_ids[None], torch.ones(1, n, dtype=torch.long))[0]
            direct = torch.zeros(n)
            direct[1:] = torch.where(row.loss_mask[1:], raw[:-1], 0.0)
            torch.testing.assert_close(values[b, :n], direct, rtol=0, atol=1e-5)
    masked = ~batch.loss_mask  # prompt, observations and padding
    assert masked.sum() > 0 and (batch.attention_mask == 0).any()
    assert torch.equal(values[masked], torch.zeros(int(masked.sum())))


class PoisonedCritic(torch.nn.Module):
    """Wraps a critic and writes ``poison`` at every output position that no policy token reads: s with
    token s+1 a prompt/observation token or padding, and the last position."""

    def __init__(self, critic: torch.nn.Module, loss_mask: torch.Tensor, poison: float) -> None:
        super().__init__()
        self.critic, self.poison = critic, poison
        self.unread = torch.ones_like(loss_mask)
        self.unread[:, :-1] = ~loss_mask[:, 1:]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.critic(input_ids, attention_mask)
        return torch.where(self.unread, torch.full_like(out, self.poison), out)


@pytest.mark.parametrize("mode", ["episode", "local"])
@pytest.mark.parametrize("poison", [math.nan, 1e6, -3.0])
def test_critic_outputs_at_masked_and_padding_positions_never_reach_an_advantage(critic, mode, poison):
    episodes = _episodes()
    batch = collate(rows_from_episodes(episodes))
    truncated = torch.tensor([e.truncated for e in episodes])

    def advantages(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            values = critic_values(model, batch)
        out = episode_gae(batch.rewards, values, batch.loss_mask, batch.episode_index, gamma=0.9,
                          lam=0.8, truncated=truncated, truncation="bootstrap", mode=mode,
                          bootstrap_values=torch.full(truncated.shape, 0.5))
        return values, out.advantages, out.returns

    clean = advantages(critic)
    poisoned = advantages(PoisonedCritic(critic, batch.loss_mask, poison))
    for a, b in zip(clean, poisoned, strict=True):
        assert torch.equal(a, b)
    assert clean[1].abs().sum() > 0  # the case is not vacuous


# ----------------------------------------------------------------------------------------------------
# Packing


def test_pack_hand_case():
    # Sorted by length: 8 (row 2), 8 (row 4), 5 (row 0), 3 (row 1), 2 (row 3). Budget 16: rows 2 and 4
    # give 2 * 8 = 16; a third would give 24. Then 5, 3, 2: 3 * 5 = 15 <= 16.
    # Padded slots 16 + 15 = 31, real tokens 8 + 8 + 5 + 3 + 2 = 26, padding fraction 5 / 31.
    micro = pack([5, 3, 8, 2, 8], max_tokens=16)
    assert micro == [MicroBatch((2, 4), 8, 16), MicroBatch((0, 1, 3), 5, 10)]
    assert padding_fraction(micro) == pytest.approx(5 / 31)
    assert padding_fraction([]) == 0.0


def test_pack_puts_an_oversize_row_alone():
    # 20 > 16 goes alone, over the budget; 7 and 6 share one: 2 * 7 = 14.
    micro = pack([7, 20, 6], max_tokens=16)
    assert [mb.indices for mb in micro] == [(1,), (0, 2)]
    assert micro[0].padded_tokens == 20


def test_pack_takes_rows_and_rejects_bad_input():
    rows = [_row(4), _row(9), _row(3)]
    assert [mb.indices for mb in pack(rows, max_tokens=9)] == [(1,), (0, 2)]
    with pytest.raises(ValueError, match="^max_tokens"):
        pack([3], max_tokens=0)
    with pytest.raises(ValueError, match="^rows: item 1"):
        pack([3, 0], max_tokens=8)


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 64), min_size=0, max_size=40),
    max_tokens=st.integers(1, 160),
)
def test_pack_properties(lengths, max_tokens):
    micro = pack(lengths, max_tokens=max_tokens)
    assert sorted(i for mb in micro for i in mb.indices) == list(range(len(lengths)))
    for mb in micro:
        assert list(mb.indices) == sorted(mb.indices)
        assert mb.max_length == max(lengths[i] for i in mb.indices)
        assert mb.num_tokens == sum(lengths[i] for i in mb.indices)
        assert mb.padded_tokens <= max_tokens or (len(mb.indices) == 1 and mb.max_length > max_tokens)
    assert pack(lengths, max_tokens=max_tokens) == micro  # deterministic
    padded = sum(len(mb.indices) * max(lengths[i] for i in mb.indices) for mb in micro)
    expected = 0.0 if not lengths else 1.0 - sum(lengths) / padded
    assert padding_fraction(micro) == pytest.approx(expected)
    assert 0.0 <= padding_fraction(micro) < 1.0
    # Greedy: a micro-batch is closed only when the next row (no longer than its longest) would overflow it.
    for mb in micro[:-1]:
        assert (len(mb.indices) + 1) * mb.max_length > max_tokens


def test_pack_keeps_padding_small_on_spread_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (200,), generator=g).tolist()
    micro = pack(lengths, max_tokens=2048)
    assert padding_fraction(micro) < 0.1
    naive = [lengths[i : i + 8] for i in range(0, len(lengths), 8)]  # unsorted, same rows per batch
    naive_fraction = 1 - sum(lengths) / sum(len(c) * max(c) for c in naive)
    assert padding_fraction(micro) < naive_fraction / 3


# ----------------------------------------------------------------------------------------------------
# Chunked evaluation and micro-batches


def test_chunked_evaluation_matches_one_batch(policy, critic):
    rows = rows_from_episodes(_episodes())
    batch = collate(rows)
    with torch.no_grad():
        full_lp = policy_logprobs(policy, batch, temperature=0.7).logprobs
        full_v = critic_values(critic, batch)
    ref = evaluate_logprobs(policy, rows, max_tokens=24, temperature=0.7, chunk_size=4)
    old_values = evaluate_values(critic, rows, max_tokens=24)
    assert len(pack(rows, max_tokens=24)) > 1
    for b, row in enumerate(rows):
        torch.testing.assert_close(ref[b], full_lp[b, : row.num_tokens], rtol=0, atol=1e-5)
        torch.testing.assert_close(old_values[b], full_v[b, : row.num_tokens], rtol=0, atol=1e-5)
    # The grad path (temperature out of place) agrees with the no-grad path (temperature in place).
    with_grad = policy_logprobs(policy, batch, temperature=0.7).logprobs
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), full_lp, rtol=0, atol=1e-6)
    filled = set_fields(rows, ref_logprobs=ref, old_values=old_values)
    again = collate(filled)
    torch.testing.assert_close(again.ref_logprobs, full_lp, rtol=0, atol=1e-5)
    assert not any(x.requires_grad for x in [*ref, *old_values])


def test_update_rows_writes_back_gae_outputs():
    episodes = _episodes()
    rows = rows_from_episodes(episodes)
    rows = set_fields(rows, old_values=[0.1 * torch.arange(r.num_tokens, dtype=torch.float32) for r in rows])
    batch = collate(rows)
    truncated = torch.tensor([e.truncated for e in episodes])
    gae = episode_gae(batch.rewards, batch.old_values, batch.loss_mask, batch.episode_index, gamma=1.0,
                      lam=1.0, truncated=truncated, truncation="mask")
    rows = update_rows(rows, batch, advantages=gae.advantages, returns=gae.returns, loss_mask=gae.mask)
    again = collate(rows)
    assert torch.equal(again.advantages, gae.advantages) and torch.equal(again.returns, gae.returns)
    assert torch.equal(again.loss_mask, gae.mask)
    assert rows[2].num_policy_tokens == 0  # the truncated episode is masked out of the loss
    assert policy_token_count(rows) == int(gae.mask.sum())


def _train_rows() -> list[Row]:
    rows = rows_from_episodes(_episodes(seed=3))
    g = torch.Generator().manual_seed(4)
    return set_fields(
        rows,
        advantages=[torch.randn(r.num_tokens, generator=g) for r in rows],
        returns=[torch.randn(r.num_tokens, generator=g) for r in rows],
        old_values=[torch.randn(r.num_tokens, generator=g) for r in rows],
    )


def _mini_batch_loss(policy, critic, rows, indices, num_tokens):
    batch = collate(rows, indices)
    lp = policy_logprobs(policy, batch, temperature=0.9).logprobs
    pl, _ = policy_loss(
        lp, batch.old_logprobs, batch.advantages, batch.loss_mask, clip_low=0.2, clip_high=0.28
    )
    values = critic_values(critic, batch)
    vl, _ = value_loss(values, batch.old_values, batch.returns, batch.loss_mask, clip=0.5)
    return aggregate(pl, batch.loss_mask, num_tokens=num_tokens) + aggregate(
        vl, batch.loss_mask, num_tokens=num_tokens
    )


def _grads(*models: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for m in models for p in m.parameters() if p.grad is not None]


def test_micro_batches_with_the_global_normaliser_match_the_full_batch(policy, critic):
    rows = _train_rows()
    n = policy_token_count(rows)
    for m in (policy, critic):
        m.zero_grad()
    full = _mini_batch_loss(policy, critic, rows, None, n)
    full.backward()
    full_grads = _grads(policy, critic)
    assert len(full_grads) > 0 and all(torch.isfinite(g).all() for g in full_grads)
    # Row lengths 23, 14, 9, 5: budget 30 gives [23], [14, 9], [5]; budget 48 gives [23, 14], [9, 5].
    for max_tokens, expected in ((30, [(0,), (1, 2), (3,)]), (48, [(0, 1), (2, 3)])):
        for m in (policy, critic):
            m.zero_grad()
        micro = pack(rows, max_tokens=max_tokens)
        assert [mb.indices for mb in micro] == expected
        total = torch.zeros(())
        for mb in micro:
            loss = _mini_batch_loss(policy, critic, rows, mb.indices, n)
            loss.backward()
            total += loss.detach()
        torch.testing.assert_close(total, full.detach(), rtol=0, atol=1e-6)
        for a, b in zip(_grads(policy, critic), full_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for m in (policy, critic):
        m.zero_grad()


def test_model_output_shape_errors_name_the_model(policy):
    batch = collate([_row(4)])
    with pytest.raises(ValueError, match=r"^critic: expected floating-point values of shape \(1, 4\)"):
        critic_values(lambda ids, mask: torch.zeros(1, 3), batch)
    with pytest.raises(ValueError, match=r"^policy: expected logits of shape \(1, 4, V\)"):
        policy_logprobs(lambda **kw: torch.zeros(1, 3, 8), batch)
    with pytest.raises(ValueError, match="^temperature"):
        policy_logprobs(policy, batch, temperature=-1.0)
    assert isinstance(batch.to("cpu"), Batch)


# ----------------------------------------------------------------------------------------------------
# The common prefix, read once


def test_common_prefix_length_hand_cases():
    def n(rows: list[list[int]], lengths: list[int]) -> int:
        return common_prefix_length(torch.tensor(rows), torch.tensor(lengths))

    assert n([[1, 2, 3, 4], [1, 2, 5, 6]], [4, 4]) == 2
    assert n([[1, 2, 3], [1, 2, 3]], [3, 3]) == 2  # every row keeps one token of its own
    assert n([[1, 2, 3, 4], [1, 2, 0, 0]], [4, 2]) == 1  # capped by the shortest row
    assert n([[7, 2, 3], [1, 2, 3]], [3, 3]) == 0
    assert n([[1, 2, 3]], [3]) == 0  # one row: nothing to share


def _prefixed_rows(prefix: int = 9) -> list[Row]:
    """Four rows of lengths 10..21 that share their first ``prefix`` tokens; policy tokens from position 3
    (so some lie inside the shared prefix)."""
    g = torch.Generator().manual_seed(3)
    head = torch.randint(0, VOCAB, (prefix,), generator=g)
    rows = []
    for i, tail in enumerate((12, 1, 7, 5)):
        ids = torch.cat([head, torch.randint(0, VOCAB, (tail,), generator=g)])
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[3:] = torch.rand(len(ids) - 3, generator=g) < 0.6
        rows.append(_row(len(ids), token_ids=ids, loss_mask=mask, episode_index=i))
    return rows


def _calls(model: torch.nn.Module) -> tuple[list[tuple[int, int]], object]:
    """The (batch, length) of every forward of ``model``, and the hook's handle."""
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    return shapes, handle


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_gives_the_full_pass_outputs_and_gradients(temperature):
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(_config()).double().eval()
    batch = collate(_prefixed_rows())
    results = []
    for shared in (0, 4):
        policy.zero_grad(set_to_none=True)
        shapes, handle = _calls(policy)
        out = policy_logprobs(policy, batch, temperature=temperature, with_entropy=True, shared_prefix=shared)
        handle.remove()
        (out.logprobs.sum() + 0.3 * out.entropy.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
        results.append((out.logprobs, out.entropy, grads, shapes))
    full, shared = results
    assert full[3] == [(4, 21)]
    assert shared[3] == [(1, 9), (4, 12)]  # the 9 shared tokens once, then the rest of every row
    for a, b in zip(full[:3], shared[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # rotary angles are float32 in transformers
    assert bool((shared[0][:, 3:9] != 0).any())  # policy tokens inside the prefix were scored


def test_shared_prefix_shorter_than_the_minimum_is_one_full_pass(policy):
    batch = collate(_prefixed_rows())
    shapes, handle = _calls(policy)
    try:
        with torch.no_grad():
            long_min = policy_logprobs(policy, batch, shared_prefix=10).logprobs
            plain = policy_logprobs(policy, batch).logprobs
    finally:
        handle.remove()
    assert shapes == [(4, 21), (4, 21)]
    assert torch.equal(long_min, plain)
    # a model that is not a Hugging Face one (no key-value cache to share) gets one full pass
    calls: list[int] = []
    with torch.no_grad():
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

        def plain_callable(**kw):
            calls.append(1)
            return logits

        assert torch.equal(policy_logprobs(plain_callable, batch, shared_prefix=4).logprobs, plain)
    assert calls == [1]
    with pytest.raises(ValueError, match="min_prefix: expected an int >= 0"):
        shared_prefix_forward(policy, batch.input_ids, batch.attention_mask, min_prefix=-1,
                              outputs=lambda o: (o.logits,))


def test_chunked_evaluation_with_a_shared_prefix_matches(policy):
    rows = _prefixed_rows()
    plain = evaluate_logprobs(policy, rows, max_tokens=4096)
    shared = evaluate_logprobs(policy, rows, max_tokens=48, shared_prefix=4)  # micro-batches of 2 rows
    for a, b in zip(plain, shared, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_prefix_groups_hand_cases():
    def groups(rows: list[list[int]], base: int) -> list[tuple[int, list[int]]]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return sorted(prefix_groups(ids, torch.tensor([len(r) for r in rows]), base))

    # two tasks of a group each, past a common token; a row of its own
    rows = [[9, 1, 2, 3, 7], [9, 1, 2, 3, 8], [9, 4, 5, 6], [9, 1, 2, 3, 6, 6], [9, 4, 5, 6, 2], [9, 8]]
    assert groups(rows, base=1) == [(3, [2, 4]), (4, [0, 1, 3])]
    # the groups share 3 tokens past the base but 9 within: two groups save 2*9 - ... more than one
    a, b = [1, 2, 3] + [4] * 9, [1, 2, 3] + [5] * 9
    assert groups([a + [0], a + [1], b + [0], b + [1]], base=0) == [(12, [0, 1]), (12, [2, 3])]
    # one group of four at 3 saves 3 * 3 = 9 tokens; two groups at 4 save 1 + 1: one group wins
    c, d = [1, 2, 3, 4], [1, 2, 3, 5]
    assert groups([c + [0], c + [1], d + [0], d + [1]], base=0) == [(3, [0, 1, 2, 3])]
    assert groups([[1, 2], [3, 4]], base=0) == []


def _grouped_rows(first_differs: bool) -> list[Row]:
    """Two tasks of three rows each (task prompts of 9 and 6 tokens after a 4-token system prompt), and
    one short row of its own; with ``first_differs`` the tasks share no first token."""
    g = torch.Generator().manual_seed(5)
    system = torch.randint(0, VOCAB, (4,), generator=g)
    rows = []
    for task, prompt in enumerate((9, 6)):
        head = torch.cat([system, torch.randint(0, VOCAB, (prompt,), generator=g)])
        if first_differs:
            head[0] = task
        for k in range(3):
            tail = torch.randint(0, VOCAB, (3 + 2 * k,), generator=g)
            ids = torch.cat([head, tail])
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[len(head) - 1 :] = True  # one policy token inside the prefix
            rows.append(_row(len(ids), token_ids=ids, loss_mask=mask, episode_index=len(rows)))
    alone = torch.cat([system, torch.randint(0, VOCAB, (2,), generator=g)])
    rows.append(_row(6, token_ids=alone, loss_mask=torch.tensor([0, 0, 0, 0, 1, 1]), episode_index=len(rows)))
    if first_differs:
        rows[-1].token_ids[0] = 2
    return rows


@pytest.mark.parametrize("first_differs", [False, True])
def test_groups_of_rows_read_their_prefix_once(first_differs):
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(_config()).double().eval()
    batch = collate(_grouped_rows(first_differs))
    results = []
    for shared in (0, 4):
        policy.zero_grad(set_to_none=True)
        shapes, handle = _calls(policy)
        out = policy_logprobs(policy, batch, with_entropy=True, shared_prefix=shared)
        handle.remove()
        (out.logprobs.sum() + 0.3 * out.entropy.sum()).backward()
        results.append((out.logprobs, out.entropy, torch.cat([p.grad.flatten() for p in policy.parameters()]),
                        shapes))
    full, grouped = results
    assert full[3] == [(7, 20)]
    # the common system prompt once (unless the tasks differ at token 0), each task's prompt once (left
    # padded to the longer), then every row's rest
    expected = [(2, 13), (7, 7)] if first_differs else [(1, 4), (2, 9), (7, 7)]
    assert grouped[3] == expected
    for a, b in zip(full[:3], grouped[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_groups_are_skipped_when_they_do_not_pay(policy):
    rows = _grouped_rows(False)[:2] + [_prefixed_rows()[0]]  # a long row of its own sets the width
    rows = [_row(r.num_tokens, token_ids=torch.cat([torch.tensor([1, 2, 3, 4, 5]), r.token_ids[5:]]),
                 loss_mask=r.loss_mask, episode_index=i) for i, r in enumerate(rows)]
    batch = collate(rows)
    shapes, handle = _calls(policy)
    with torch.no_grad():
        shared = policy_logprobs(policy, batch, shared_prefix=4).logprobs
        plain = policy_logprobs(policy, batch).logprobs
    handle.remove()
    assert shapes[:2] == [(1, 5), (3, batch.shape[1] - 5)]
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
