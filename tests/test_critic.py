"""The critic and the reference built from the policy: the t-1 alignment of values against a direct
computation, initialisation from the policy's weights, save/load round trips, the shared value head's
one forward pass, and the frozen reference. A tiny random Qwen2, offline."""

import pytest
import torch
from transformers import AutoModel, Qwen2Config, Qwen2ForCausalLM

from agentrl.batch import Row, collate
from agentrl.critic import (
    VALUE_HEAD_FILE,
    SharedValueHead,
    ValueModel,
    critic_from_policy,
    load_critic,
    load_shared_value_head,
    reference_from_policy,
    save_critic,
)
from agentrl.forward import critic_values

VOCAB = 64


def _policy(seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def _rows() -> list[Row]:
    """Three rows of lengths 7, 4 and 9 with prompts, policy turns and observations."""
    g = torch.Generator().manual_seed(0)
    masks = [[0, 0, 1, 1, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 0, 0, 1]]
    return [
        Row(
            episode_index=i,
            sub_trace_index=0,
            token_ids=torch.randint(0, VOCAB, (len(m),), generator=g),
            loss_mask=torch.tensor(m),
            old_logprobs=torch.zeros(len(m)),
            rewards=torch.zeros(len(m)),
        )
        for i, m in enumerate(masks)
    ]


@pytest.fixture(scope="module")
def policy() -> Qwen2ForCausalLM:
    return _policy()


def test_value_for_token_t_is_the_head_on_the_backbone_hidden_state_at_t_minus_1(policy):
    critic = critic_from_policy(policy, seed=1)
    rows = _rows()
    batch = collate(rows)
    with torch.no_grad():
        values = critic_values(critic, batch)  # (B, T), padded
        for b, row in enumerate(rows):
            # Direct: one unpadded row through the backbone, the head by hand at position t - 1.
            hidden = critic.backbone(input_ids=row.token_ids[None]).last_hidden_state[0]  # (T_b, H)
            for t in range(batch.shape[1]):
                if t < row.num_tokens and row.loss_mask[t]:
                    expected = hidden[t - 1] @ critic.head.weight[0] + critic.head.bias[0]
                    torch.testing.assert_close(values[b, t], expected, rtol=1e-5, atol=1e-6)
                else:  # prompt, observation and padding positions are exactly 0
                    assert values[b, t] == 0.0
    assert values.dtype == torch.float32


def test_critic_starts_from_the_policy_backbone_and_is_independent_of_it(policy):
    critic = critic_from_policy(policy, seed=1)
    assert isinstance(critic, ValueModel)
    policy_params = dict(policy.model.named_parameters())
    critic_params = dict(critic.backbone.named_parameters())
    assert policy_params.keys() == critic_params.keys()
    for name, p in critic_params.items():
        assert torch.equal(p, policy_params[name]), name
        assert p.data_ptr() != policy_params[name].data_ptr(), f"{name} shares storage with the policy"
        assert p.requires_grad
    # The head: small, seeded, bias 0; the same seed gives the same head.
    assert critic.head.weight.abs().max() < 0.2 and torch.all(critic.head.bias == 0)
    assert torch.equal(critic.head.weight, critic_from_policy(policy, seed=1).head.weight)
    assert not torch.equal(critic.head.weight, critic_from_policy(policy, seed=2).head.weight)


def test_critic_save_load_round_trip(policy, tmp_path):
    critic = critic_from_policy(policy, seed=3)
    with torch.no_grad():
        critic.head.bias.fill_(0.5)  # something a fresh head would not have
    path = save_critic(critic, tmp_path / "critic")
    assert (path / "config.json").is_file() and (path / VALUE_HEAD_FILE).is_file()
    loaded = load_critic(path)
    batch = collate(_rows())
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(batch.input_ids, batch.attention_mask), critic(batch.input_ids, batch.attention_mask)
        )
    AutoModel.from_pretrained(path)  # the backbone is an ordinary Hugging Face directory
    with pytest.raises(ValueError, match=VALUE_HEAD_FILE):
        load_critic(save_critic_without_head(critic, tmp_path / "no-head"))


def save_critic_without_head(critic: ValueModel, path):
    critic.backbone.save_pretrained(path)
    return path


def test_shared_value_head_gives_logits_and_values_from_one_forward_pass(policy, tmp_path):
    shared = SharedValueHead(policy, seed=4)
    assert [name for name, _ in shared.named_parameters()] == ["head.weight", "head.bias"]
    batch = collate(_rows())
    calls = []
    handle = policy.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            logits, values = shared.policy_and_values(batch.input_ids, batch.attention_mask)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        direct = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(logits, direct)
        torch.testing.assert_close(values, shared(batch.input_ids, batch.attention_mask))
    # detach_backbone: the head gets a gradient, the policy none.
    shared(batch.input_ids, batch.attention_mask, detach_backbone=True).sum().backward()
    assert shared.head.weight.grad is not None
    assert all(p.grad is None for p in policy.parameters())
    loaded = load_shared_value_head(save_critic(shared, tmp_path / "head"), policy)
    assert torch.equal(loaded.head.weight, shared.head.weight) and loaded.policy is policy


def test_reference_is_a_frozen_copy(policy):
    reference = reference_from_policy(policy)
    assert not reference.training
    for (name, p), q in zip(reference.named_parameters(), policy.parameters(), strict=True):
        assert not p.requires_grad, name
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
    assert all(p.requires_grad for p in policy.parameters())  # the policy itself is untouched


def test_a_model_without_a_base_model_is_refused():
    with pytest.raises(ValueError, match="base model"):
        critic_from_policy(torch.nn.Linear(2, 2), seed=0)  # type: ignore[arg-type]


def _prefixed_batch():
    """Three rows sharing their first 6 tokens, then 3, 8 and 5 tokens of their own."""
    g = torch.Generator().manual_seed(2)
    head = torch.randint(0, VOCAB, (6,), generator=g)
    rows = []
    for i, tail in enumerate((3, 8, 5)):
        ids = torch.cat([head, torch.randint(0, VOCAB, (tail,), generator=g)])
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[4:] = True
        rows.append(Row(episode_index=i, sub_trace_index=0, token_ids=ids, loss_mask=mask,
                        old_logprobs=torch.zeros(len(ids)), rewards=torch.zeros(len(ids))))
    return collate(rows)


def _grads(*models: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for m in models for p in m.parameters() if p.grad is not None])


def test_critics_read_a_shared_prefix_once_with_the_same_values_and_gradients():
    batch = _prefixed_batch()
    policy = _policy(seed=3)
    separate, shared = critic_from_policy(policy, seed=1), SharedValueHead(policy, seed=1)
    for name, run, models in (
        ("separate", lambda n: separate(batch.input_ids, batch.attention_mask, shared_prefix=n), [separate]),
        ("shared", lambda n: shared(batch.input_ids, batch.attention_mask, shared_prefix=n),
         [policy, shared]),
        ("one pass", lambda n: shared.policy_and_values(batch.input_ids, batch.attention_mask,
                                                        shared_prefix=n)[1], [policy, shared]),
    ):
        out = []
        for n in (0, 2):
            for m in models:
                m.zero_grad(set_to_none=True)
            values = run(n)
            critic_values(lambda *_, v=values: v, batch).sum().backward()
            out.append((values, _grads(*models)))
        (v0, g0), (v1, g1) = out
        real = batch.attention_mask.bool()  # outputs at padding positions are arbitrary
        torch.testing.assert_close(v0[real], v1[real], rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-5, msg=name)
    with torch.no_grad():
        logits = [shared.policy_and_values(batch.input_ids, batch.attention_mask, shared_prefix=n)[0]
                  for n in (0, 2)]
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits[0][real], logits[1][real], rtol=0, atol=1e-5)
