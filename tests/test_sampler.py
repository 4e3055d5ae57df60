"""Tests for agentrl.rollout: the Sampler protocol and the torch backend with a per-session KV cache."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from agentrl.rollout import (
    Generation,
    Sampler,
    SamplingParams,
    TorchSampler,
    generate_without_cache,
    sample_tokens,
)

VOCAB = 300


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config).float().eval()


def _ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _multi_turn(sampler: TorchSampler, prompts, observations, params):
    """Run len(observations)+1 turns on all prompts at once; return each session's full sequence and
    its policy positions with the recorded log-probs."""
    sessions = [sampler.open(p) for p in prompts]
    sequences = [list(p) for p in prompts]
    policy: list[list[tuple[int, float]]] = [[] for _ in prompts]
    for turn in range(len(observations) + 1):
        gens = sampler.generate(sessions, SamplingParams(**{**params, "seed": 100 + turn}))
        for i, gen in enumerate(gens):
            policy[i] += [(len(sequences[i]) + k, lp) for k, lp in enumerate(gen.logprobs)]
            sequences[i] += gen.token_ids
        if turn < len(observations):
            for i, s in enumerate(sessions):
                sampler.append(s, observations[turn][i])
                sequences[i] += observations[turn][i]
    return sessions, sequences, policy


PROMPTS = [_ids(1, 5), _ids(2, 13), _ids(3, 1)]
OBSERVATIONS = [[_ids(10, 4), _ids(11, 1), _ids(12, 9)], [_ids(20, 7), _ids(21, 2), _ids(22, 3)]]


def _log_nucleus_mass(logp_V: torch.Tensor, top_p: float) -> torch.Tensor:
    """log of the probability mass top-p keeps: the tokens whose sorted mass before them is < top_p."""
    probs = logp_V.exp().sort(descending=True).values
    before = probs.cumsum(0) - probs
    return probs[before < top_p].sum().log()


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6},
        {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 5, "stop_token_ids": (7, 8, 9)},
        {"temperature": 0.0, "max_new_tokens": 4},
    ],
)
def test_recorded_logprobs_match_a_fresh_forward_over_the_whole_sequence(model, params) -> None:
    _, sequences, policy = _multi_turn(TorchSampler(model), PROMPTS, OBSERVATIONS, params)
    temperature = params["temperature"] or 1.0  # greedy records temperature-1 log-probs
    for sequence, recorded in zip(sequences, policy, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([sequence])).logits[0].float()
        logp = torch.log_softmax(logits / temperature, dim=-1)
        top_p = params.get("top_p", 1.0) if params["temperature"] else 1.0
        fresh = [(logp[pos - 1, sequence[pos]] - _log_nucleus_mass(logp[pos - 1], top_p)).item()
                 for pos, _ in recorded]
        assert len(recorded) > 0
        assert fresh == pytest.approx([lp for _, lp in recorded], abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_sampling_matches_full_recomputation(model, temperature) -> None:
    # Multi-turn through the cache; then the reference re-encodes each session's whole context per step.
    sampler = TorchSampler(model)
    params = {"temperature": temperature, "max_new_tokens": 6, "stop_token_ids": (5,)}
    sessions, sequences, _ = _multi_turn(sampler, PROMPTS, OBSERVATIONS, params)
    final = SamplingParams(**{**params, "seed": 7, "max_new_tokens": 8})
    cached = sampler.generate(sessions, final)
    reference = generate_without_cache(model, sequences, final)
    for got, want in zip(cached, reference, strict=True):
        assert got.token_ids == want.token_ids
        assert got.finish_reason == want.finish_reason
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_sessions_sharing_a_prompt_are_prefilled_once(model) -> None:
    """A group of four sessions on one prompt and one other session: the prompt is encoded once, and
    every row samples what the full-recomputation reference samples from its own context (two turns,
    so the copied caches are also the ones the second turn continues from)."""
    prompts = [PROMPTS[1]] * 4 + [PROMPTS[0]]
    sampler = TorchSampler(model)
    sessions = [sampler.open(p) for p in prompts]
    first = SamplingParams(temperature=1.0, max_new_tokens=5, seed=11)
    gens = sampler.generate(sessions, first)
    assert sampler.num_encoded_tokens == len(PROMPTS[1]) + len(PROMPTS[0]) + sum(
        len(g.token_ids) - 1 for g in gens)  # each row's last sampled token is queued, not encoded
    reference = generate_without_cache(model, prompts, first)
    assert [g.token_ids for g in gens] == [g.token_ids for g in reference]
    assert len({g.token_ids for g in gens[:4]}) > 1  # the group's rows sampled apart
    contexts = [list(p) + list(g.token_ids) + [7, 8] for p, g in zip(prompts, gens, strict=True)]
    for sid in sessions:
        sampler.append(sid, [7, 8])
    second = SamplingParams(temperature=1.0, max_new_tokens=4, seed=12)
    again, want = sampler.generate(sessions, second), generate_without_cache(model, contexts, second)
    for got, ref in zip(again, want, strict=True):
        assert got.token_ids == ref.token_ids
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)


def test_a_long_queue_is_encoded_on_its_own(model) -> None:
    """Three sessions one turn in, then a new one with a 60-token prompt (a resumed window): the long
    queue is encoded in a pass of its own, all but its last token, so the batch's prefill stays short;
    the tokens are the full-recomputation reference's."""
    sampler = TorchSampler(model)
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=2)
    sessions = [sampler.open(p) for p in PROMPTS]
    gens = sampler.generate(sessions, params)
    contexts = [list(p) + list(g.token_ids) + [7] for p, g in zip(PROMPTS, gens, strict=True)]
    for sid in sessions:
        sampler.append(sid, [7])
    long_prompt = _ids(30, 60)
    sessions.append(sampler.open(long_prompt))
    contexts.append(long_prompt)
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        second = SamplingParams(temperature=1.0, max_new_tokens=5, seed=3)
        got = sampler.generate(sessions, second)
    finally:
        hook.remove()
    assert shapes[:2] == [(1, 59), (4, 2)]  # 59 tokens alone; then the last sampled token + 7, or the 60th
    want = generate_without_cache(model, contexts, second)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


def test_a_session_gives_the_same_result_alone_and_in_a_batch(model) -> None:
    params = {"temperature": 0.0, "max_new_tokens": 7}
    _, alone_seq, alone_policy = _multi_turn(
        TorchSampler(model), PROMPTS[1:2], [o[1:2] for o in OBSERVATIONS], params
    )
    _, batch_seq, batch_policy = _multi_turn(TorchSampler(model), PROMPTS, OBSERVATIONS, params)
    assert alone_seq[0] == batch_seq[1]
    assert [lp for _, lp in alone_policy[0]] == pytest.approx([lp for _, lp in batch_policy[1]], abs=1e-4)


def test_a_second_turn_encodes_only_the_new_tokens(model) -> None:
    sampler = TorchSampler(model)
    fed: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=0)
        session = sampler.open(PROMPTS[1])
        first = sampler.generate([session], params)[0]
        assert sum(fed) == len(PROMPTS[1]) + len(first.token_ids) - 1  # the last token waits in the queue
        fed.clear()
        observation = _ids(30, 6)
        sampler.append(session, observation)
        second = sampler.generate([session], params)[0]
        # The previous turn's last token + the observation, then one token per decode step.
        assert sum(fed) == len(observation) + len(second.token_ids)
        assert fed[0] == 1 + len(observation)
        assert sampler.num_tokens(session) == len(PROMPTS[1]) + len(first.token_ids) + len(observation) + len(
            second.token_ids
        )
    finally:
        hook.remove()


def test_batched_second_turn_counts_only_real_new_tokens(model) -> None:
    sampler = TorchSampler(model)
    sessions = [sampler.open(p) for p in PROMPTS]
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=3)
    first = sampler.generate(sessions, params)
    for s, obs in zip(sessions, OBSERVATIONS[0], strict=True):
        sampler.append(s, obs)
    before = sampler.num_encoded_tokens
    second = sampler.generate(sessions, params)
    expected = sum(len(o) + len(g.token_ids) for o, g in zip(OBSERVATIONS[0], second, strict=True))
    assert sampler.num_encoded_tokens - before == expected
    assert before == sum(len(p) + len(g.token_ids) - 1 for p, g in zip(PROMPTS, first, strict=True))


def test_stop_tokens_end_a_turn_and_are_kept(model) -> None:
    sampler = TorchSampler(model)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    free = sampler.generate([sampler.open(PROMPTS[0])], greedy)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 10
    stop = free.token_ids[3]
    first_stop = free.token_ids.index(stop)
    stopped = sampler.generate(
        [sampler.open(PROMPTS[0])], SamplingParams(**{**greedy.__dict__, "stop_token_ids": (stop,)})
    )
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].token_ids == free.token_ids[: first_stop + 1]
    assert stopped[0].logprobs == pytest.approx(free.logprobs[: first_stop + 1], abs=1e-5)


def test_rows_finish_independently_in_one_batch(model) -> None:
    sampler = TorchSampler(model)
    sessions = [sampler.open(p) for p in PROMPTS]
    gens = sampler.generate(
        sessions,
        SamplingParams(temperature=1.0, max_new_tokens=12, seed=1, stop_token_ids=tuple(range(0, VOCAB, 9))),
    )
    lengths = [len(g.token_ids) for g in gens]
    for g in gens:
        assert all(-50.0 < lp <= 0.0 for lp in g.logprobs)
        assert (g.finish_reason == "stop") == (g.token_ids[-1] % 9 == 0)
        assert all(t % 9 != 0 for t in g.token_ids[:-1])
    assert len(set(lengths)) > 1  # the rows really stopped at different steps


def test_per_session_limits_share_one_batch(model) -> None:
    """Each row stops at its own max_new_tokens; the rows' draws are the same as with one common limit,
    so every row is a prefix of the uniform-limit run."""

    def run(limits: list[int]) -> list[Generation]:
        sampler = TorchSampler(model)
        sessions = [sampler.open(p) for p in PROMPTS[:3]]
        return sampler.generate(sessions, [SamplingParams(max_new_tokens=n, seed=3) for n in limits])

    uniform, mixed = run([12, 12, 12]), run([3, 12, 7])
    assert [len(g.token_ids) for g in mixed] == [3, 12, 7]
    assert all(g.finish_reason == "length" for g in mixed)
    for whole, part in zip(uniform, mixed, strict=True):
        n = len(part.token_ids)
        assert part.token_ids == whole.token_ids[:n]
        assert part.logprobs == pytest.approx(whole.logprobs[:n], abs=1e-5)
    sampler = TorchSampler(model)
    sessions = [sampler.open(p) for p in PROMPTS[:2]]
    with pytest.raises(ValueError, match="max_new_tokens only"):
        sampler.generate(sessions, [SamplingParams(temperature=1.0), SamplingParams(temperature=0.5)])
    with pytest.raises(ValueError, match="one per session"):
        sampler.generate(sessions, [SamplingParams()])


def test_same_seed_same_tokens_and_other_seed_other_tokens(model) -> None:
    def run(seed: int) -> list[Generation]:
        sampler = TorchSampler(model)
        return sampler.generate(
            [sampler.open(p) for p in PROMPTS], SamplingParams(max_new_tokens=12, seed=seed)
        )

    assert run(4) == run(4)
    assert [g.token_ids for g in run(4)] != [g.token_ids for g in run(5)]


def test_tiny_top_p_is_greedy_and_records_the_nucleus_it_sampled_from(model) -> None:
    greedy = generate_without_cache(model, PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=6))
    nucleus = generate_without_cache(
        model, PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=6, seed=2)
    )
    for g, n in zip(greedy, nucleus, strict=True):
        assert g.token_ids == n.token_ids
        # a nucleus of one token: it was sampled with probability 1
        assert n.logprobs == pytest.approx([0.0] * len(n.logprobs), abs=1e-6)
        assert max(g.logprobs) < -1e-3  # the full distribution's log-probs, which top-p must not record


def test_sample_tokens_inverse_cdf_hand_case() -> None:
    # probs = softmax(log[0.1, 0.2, 0.3, 0.4]) = [0.1, 0.2, 0.3, 0.4]; cdf = [0.1, 0.3, 0.6, 1.0].
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).expand(4, 4)
    params = SamplingParams(temperature=1.0)
    tokens, logprobs = sample_tokens(logits, params, torch.tensor([0.05, 0.25, 0.59, 0.99]))
    assert tokens.tolist() == [0, 1, 2, 3]
    assert logprobs.tolist() == pytest.approx(torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).tolist())
    # top_p = 0.65: sorted [0.4, 0.3, 0.2, 0.1], mass before each = [0, 0.4, 0.7, 0.9] -> keep {3, 2};
    # nucleus cdf = [0.4, 0.7] of 0.7, so u = 0.5 -> target 0.35 -> token 3, u = 0.6 -> 0.42 -> token 2.
    # Recorded: the renormalised nucleus, log(0.4 / 0.7) and log(0.3 / 0.7), not log 0.4 and log 0.3.
    tokens, logprobs = sample_tokens(logits[:2], SamplingParams(top_p=0.65), torch.tensor([0.5, 0.6]))
    assert tokens.tolist() == [3, 2]
    assert logprobs.tolist() == pytest.approx([math.log(0.4 / 0.7), math.log(0.3 / 0.7)], abs=1e-6)


def test_protocol_validation_and_session_lifecycle(model) -> None:
    sampler = TorchSampler(model)
    assert isinstance(sampler, Sampler)
    assert sampler.generate([], SamplingParams()) == []
    session = sampler.open([1, 2, 3])
    with pytest.raises(ValueError, match="sessions"):
        sampler.generate([session, session], SamplingParams())
    with pytest.raises(ValueError, match="token_ids"):
        sampler.append(session, [VOCAB])
    with pytest.raises(ValueError, match="prompt_ids"):
        sampler.open([])
    sampler.close(session)
    with pytest.raises(ValueError, match="session"):
        sampler.append(session, [1])
    model.train()
    sampler.generate([sampler.open([1])], SamplingParams(max_new_tokens=2, seed=0))
    assert model.training  # the training flag is restored after sampling
    model.eval()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


def test_buffered_cache_layer_holds_what_concatenation_would() -> None:
    from transformers.cache_utils import DynamicLayer

    from agentrl.rollout import _BufferedLayer

    torch.manual_seed(1)
    buffered, plain = _BufferedLayer(capacity=2), DynamicLayer()  # too small: the buffer must grow
    for n in (3, 1, 1, 4):
        k, v = torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
        got, want = buffered.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    index = torch.tensor([1])
    buffered.batch_select_indices(index)
    plain.batch_select_indices(index)
    assert torch.equal(buffered.keys, plain.keys) and buffered.get_seq_length() == 9
    k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    assert torch.equal(buffered.update(k, v)[1], plain.update(k, v)[1])
