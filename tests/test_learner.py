"""The learner: PPO and GRPO updates on a tiny random Qwen2 with synthetic episodes whose log-probs come
from the policy itself (so every ratio starts at 1). Every trained parameter changes; two micro-batch
sizes give the same update; a NaN loss skips the update and the run goes on; GRPO advantages, the
per-episode adaptive lambda, the critic-lambda returns, whitening and the KL term against hand or
independent computations; masked critic outputs never reach an advantage; resuming from state_dict.
Offline, seconds."""

import copy
import dataclasses
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import agentrl.learner as learner_module
from agentrl.advantages import single_episode_gae
from agentrl.batch import Row, collate, rows_from_episodes
from agentrl.config import (
    CompactionSection,
    GRPOSection,
    OptimSection,
    PPOSection,
    RolloutSection,
    TrainConfig,
)
from agentrl.critic import SharedValueHead, critic_from_policy, reference_from_policy
from agentrl.forward import evaluate_logprobs
from agentrl.learner import Learner, batch_metrics
from agentrl.types import Episode, SubTrace

VOCAB = 64
BUDGET = 32  # rollout.context_budget: every sub-trace fits


def _policy(seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(dtype).eval()


def _mask(g: torch.Generator, length: int, prompt: int) -> list[int]:
    """A prompt, then alternating policy turns (1-4 tokens) and observations (1-3 tokens)."""
    mask = [0] * prompt
    while len(mask) < length:
        turn, obs = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        mask += [1] * turn + [0] * obs
    return mask[:length]


# (sub-trace (length, prompt) pairs, group, episode reward, end)
SPEC = [
    (((23, 4), (14, 6)), "a", 1.0, "terminated"),  # compacted: two sub-traces
    (((12, 3),), "a", 0.0, "truncated"),
    (((9, 2),), "a", 2.0, "terminated"),
    (((17, 5), (8, 3)), "b", 0.5, "terminated"),
    (((6, 2),), "b", 0.5, "truncated"),
]


def _episodes(
    policy: torch.nn.Module, spec=SPEC, seed: int = 0, temperature: float = 1.0, prefix: int = 0
) -> list[Episode]:
    """Episodes of random tokens whose recorded log-probs are the policy's own at ``temperature``; each
    episode's reward sits on the last policy token of its last sub-trace. Every sub-trace starts with the
    same ``prefix`` tokens (as if they shared a system prompt)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(e, s, n, p) for e, (subs, *_) in enumerate(spec) for s, (n, p) in enumerate(subs)]
    masks = [_mask(g, n, p) for _, _, n, p in shapes]
    ids = [torch.randint(0, VOCAB, (len(m),), generator=g) for m in masks]
    for i in ids:
        i[:prefix] = torch.arange(prefix)
    rows = [
        Row(episode_index=e, sub_trace_index=s, token_ids=i, loss_mask=torch.tensor(m),
            old_logprobs=torch.zeros(len(m)), rewards=torch.zeros(len(m)))
        for (e, s, _, _), m, i in zip(shapes, masks, ids, strict=True)
    ]
    logprobs = evaluate_logprobs(policy, rows, max_tokens=4096, temperature=temperature)
    episodes = []
    for e, (subs, group, reward, end) in enumerate(spec):
        sub_traces = []
        mine = [(r, lp) for r, lp in zip(rows, logprobs, strict=True) if r.episode_index == e]
        for k, (row, lp) in enumerate(mine):
            mask = row.loss_mask.long().tolist()
            rewards = [0.0] * len(mask)
            if k == len(subs) - 1:
                rewards[max(i for i, m in enumerate(mask) if m)] = reward
            sub_traces.append(SubTrace(
                tuple(row.token_ids.tolist()), tuple(mask),
                tuple(float(x) if m else None for x, m in zip(lp.double().tolist(), mask, strict=True)),
                tuple(rewards),
            ))
        episodes.append(Episode(
            tuple(sub_traces), task_id=f"t{e}", group_id=group, end=end,
            truncation_reason="max_turns" if end == "truncated" else None,
        ))
    return episodes


def _cfg(
    algorithm: str = "ppo", *, micro: int = 4096, lr: float = 1e-3, temperature: float = 1.0, **section
) -> TrainConfig:
    rollout = RolloutSection(
        tasks_per_iteration=5, group_size=2, max_response_tokens=8, context_budget=BUDGET,
        temperature=temperature, compaction=CompactionSection(max_summary_tokens=8),
    )
    optim = OptimSection(actor_lr=lr, critic_lr=lr, micro_batch_tokens=micro)
    if algorithm == "ppo":
        return TrainConfig(algorithm="ppo", rollout=rollout, optim=optim, ppo=PPOSection(**section))
    return TrainConfig(algorithm="grpo", rollout=rollout, optim=optim, grpo=GRPOSection(**section))


def _snapshot(*models: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in models for p in m.parameters()]


def _unchanged(models, before) -> list[str]:
    names = [n for m in models for n, _ in m.named_parameters()]
    after = [p for m in models for p in m.parameters()]
    return [n for n, a, b in zip(names, after, before, strict=True) if torch.equal(a, b)]


def _finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


@pytest.fixture()
def policy() -> Qwen2ForCausalLM:
    return _policy()


@pytest.fixture()
def episodes(policy) -> list[Episode]:
    return _episodes(policy)


# ----------------------------------------------------------------------------------------------------
# One update: finite, and every trained parameter moves.


def test_ppo_step_changes_every_policy_and_critic_parameter(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    learner = Learner(_cfg("ppo", minibatches=2, critic_updates=2, actor_lam=0.95), policy, critic=critic)
    before = _snapshot(policy, critic)
    metrics = learner.step(episodes)
    assert _finite(metrics) and metrics["skipped_updates"] == 0
    for key in ("policy/loss", "policy/clip_frac", "policy/approx_kl", "policy/entropy", "grad_norm/policy",
                "critic/loss", "critic/explained_variance", "grad_norm/critic", "adv/mean", "adv/std"):
        assert key in metrics, key
    assert metrics["policy/approx_kl"] < 1e-3  # ratios start at 1: the first mini-batch sees the old policy
    assert _unchanged([policy, critic], before) == []


def test_grpo_step_changes_every_policy_parameter_and_leaves_the_reference(policy, episodes):
    reference = reference_from_policy(policy)
    learner = Learner(_cfg("grpo", minibatches=2, epochs=2), policy, reference=reference)
    before, ref_before = _snapshot(policy), _snapshot(reference)
    metrics = learner.step(episodes)
    assert _finite(metrics) and metrics["skipped_updates"] == 0 and "policy/kl" in metrics
    assert _unchanged([policy], before) == []
    assert len(_unchanged([reference], ref_before)) == len(ref_before)


def test_shared_critic_trains_backbone_and_head_in_the_policy_update(policy, episodes):
    shared = SharedValueHead(policy, seed=1)
    learner = Learner(_cfg("ppo"), policy, critic=shared)
    rows = learner.prepare(episodes)
    policy_before, head_before = _snapshot(policy), _snapshot(shared)
    metrics = learner.update_critic(rows)  # the head alone: the policy does not move
    assert _finite(metrics)
    assert len(_unchanged([policy], policy_before)) == len(policy_before)
    assert _unchanged([shared], head_before) == []
    head_before = _snapshot(shared)
    metrics = learner.update_policy(rows)
    assert _finite(metrics) and "critic/clip_frac" in metrics
    assert _unchanged([policy, shared], policy_before + head_before) == []


def test_value_pretraining_moves_the_critic_only(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    learner = Learner(_cfg("ppo", value_pretrain_steps=1), policy, critic=critic)
    policy_before, critic_before = _snapshot(policy), _snapshot(critic)
    metrics = learner.step(episodes)
    assert metrics["critic/pretraining"] == 1.0 and "policy/loss" not in metrics
    assert len(_unchanged([policy], policy_before)) == len(policy_before)
    assert _unchanged([critic], critic_before) == []
    metrics = learner.step(episodes)
    assert "policy/loss" in metrics and _unchanged([policy], policy_before) == []


@pytest.mark.parametrize(("sampled_at", "configured"), [(0.7, 0.7), (1.0, 0.0)])
def test_log_probs_are_recomputed_at_the_rollout_temperature(policy, sampled_at, configured):
    episodes = _episodes(policy, temperature=sampled_at)  # 0 (greedy) is recorded at temperature 1
    learner = Learner(_cfg("grpo", kl_beta=0.0, temperature=configured, lr=1e-6), policy)
    metrics = learner.update_policy(learner.prepare(episodes))
    assert metrics["policy/approx_kl"] < 1e-9 and metrics["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    mismatched = Learner(_cfg("grpo", kl_beta=0.0, temperature=0.5, lr=1e-6), policy)
    assert mismatched.update_policy(mismatched.prepare(episodes))["policy/approx_kl"] > 1e-4


# ----------------------------------------------------------------------------------------------------
# Micro-batching and non-finite losses.


@pytest.mark.parametrize(
    ("algorithm", "section"),
    [
        ("ppo", {"aggregation": "token-mean", "minibatches": 2}),
        ("ppo", {"aggregation": "seq-mean-token-mean", "dual_clip": 3.0}),
        ("grpo", {"aggregation": "seq-mean-token-sum-norm", "kl_beta": 0.04}),
    ],
)
def test_two_micro_batch_sizes_give_the_same_update(algorithm, section):
    policy = _policy(dtype=torch.float64)
    episodes = _episodes(policy)
    params = []
    for micro in (BUDGET, 4096):  # one or two rows per micro-batch vs the whole mini-batch at once
        p = copy.deepcopy(policy)
        critic = critic_from_policy(p, seed=1) if algorithm == "ppo" else None
        reference = reference_from_policy(p) if section.get("kl_beta") else None
        learner = Learner(_cfg(algorithm, micro=micro, lr=1e-2, **section), p, critic=critic,
                          reference=reference, seed=7)
        metrics = learner.step(episodes)
        assert metrics["skipped_updates"] == 0
        params.append(_snapshot(p, *([critic] if critic is not None else [])))
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("algorithm", "critic_kind", "section"),
    [("ppo", "separate", {"minibatches": 2}), ("ppo", "shared", {}), ("grpo", None, {"kl_beta": 0.04})],
)
def test_a_shared_prefix_gives_the_same_update(algorithm, critic_kind, section):
    policy = _policy(dtype=torch.float64)
    episodes = _episodes(policy, prefix=5)
    params, shapes = [], []
    for shared_prefix in (0, 4):
        p = copy.deepcopy(policy)
        critic = None
        if critic_kind == "separate":
            critic = critic_from_policy(p, seed=1)
        elif critic_kind == "shared":
            critic = SharedValueHead(p, seed=1)
        reference = reference_from_policy(p) if section.get("kl_beta") else None
        cfg = _cfg(algorithm, lr=1e-2, **section)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, shared_prefix=shared_prefix))
        learner = Learner(cfg, p, critic=critic, reference=reference, seed=7)
        shapes.append([])
        handle = p.register_forward_pre_hook(
            lambda _m, _a, kw: shapes[-1].append(tuple(kw["input_ids"].shape)), with_kwargs=True
        )
        learner.step(episodes)
        handle.remove()
        params.append(_snapshot(p, *([critic] if critic is not None else [])))
    assert all(b > 1 for b, _ in shapes[0])
    assert (1, 5) in shapes[1]  # the 5 shared tokens, read once
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_nan_loss_skips_the_update_and_the_next_one_works(policy, episodes, monkeypatch, caplog):
    learner = Learner(_cfg("grpo"), policy, reference=reference_from_policy(policy))
    rows = learner.prepare(episodes)
    real = learner_module.policy_loss

    def nan_loss(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * torch.nan, metrics

    before = _snapshot(policy)
    monkeypatch.setattr(learner_module, "policy_loss", nan_loss)
    metrics = learner.update_policy(rows)
    assert metrics["skipped_updates"] == 1 and learner.skipped_updates == 1
    assert "policy/loss" not in metrics  # a skipped step's metrics are not reported
    assert "update skipped" in caplog.text
    assert len(_unchanged([policy], before)) == len(before)
    assert all(p.grad is None for p in policy.parameters())
    assert learner.policy_optimizer.state_dict()["state"] == {}  # the optimiser did not step either

    monkeypatch.setattr(learner_module, "policy_loss", real)
    metrics = learner.update_policy(rows)
    assert metrics["skipped_updates"] == 0 and _finite(metrics)
    assert _unchanged([policy], before) == []


def test_an_inf_critic_output_skips_the_critic_update(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    learner = Learner(_cfg("ppo"), policy, critic=critic)
    rows = learner.prepare(episodes)
    with torch.no_grad():
        critic.head.bias.fill_(torch.inf)
    before = _snapshot(critic)
    assert learner.update_critic(rows)["skipped_updates"] == 1
    after = _snapshot(critic)
    assert all(torch.equal(a, b) or torch.isinf(a).all() for a, b in zip(after, before, strict=True))
    assert learner.critic_optimizer.state_dict()["state"] == {}


# ----------------------------------------------------------------------------------------------------
# Advantages and returns.


def test_grpo_advantages_match_a_hand_computation(policy, episodes):
    rows = Learner(_cfg("grpo", kl_beta=0.0), policy).prepare(episodes)
    # Group a: rewards 1, 0, 2: mean 1, sample std sqrt(((0)^2 + 1^2 + 1^2) / 2) = 1 -> A = 0, -1, 1.
    # Group b: rewards 0.5, 0.5: all equal -> A = 0.
    expected = [0.0, -1.0 / (1 + 1e-6), 1.0 / (1 + 1e-6), 0.0, 0.0]
    for row in rows:
        want = torch.where(row.loss_mask, torch.tensor(expected[row.episode_index]), torch.tensor(0.0))
        torch.testing.assert_close(row.advantages, want)
        assert row.ref_logprobs is None  # no KL: no reference pass


def test_returns_use_the_critic_lambda_and_advantages_the_adaptive_lambda_per_episode(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    alpha = 0.2  # small enough that the per-episode lambdas differ visibly
    learner = Learner(_cfg("ppo", actor_lam="adaptive", alpha=alpha, critic_lam=1.0), policy, critic=critic)
    rows = learner.prepare(episodes)
    lam = learner.actor_lam(episodes)
    lengths = [e.num_policy_tokens for e in episodes]
    expected = [max(0.0, 1 - 1 / (alpha * n)) for n in lengths]  # alpha * l <= 1 is clamped to 0
    torch.testing.assert_close(lam, torch.tensor(expected, dtype=lam.dtype))
    assert len(set(lam.tolist())) > 1
    for e, episode in enumerate(episodes):
        mine = [r for r in rows if r.episode_index == e]
        # gamma = critic_lam = 1: a return is the reward still to come in the episode (the default
        # truncation, zero, ends a truncated episode as if terminated).
        after = episode.reward
        for row in mine:
            for t in range(row.num_tokens):
                if row.loss_mask[t]:
                    assert float(row.returns[t]) == pytest.approx(after, abs=1e-5)
                    after -= float(row.rewards[t])
        # Advantages: GAE of this episode alone with its own lambda, as a float.
        gae = single_episode_gae(
            [r.rewards for r in mine], [r.old_values for r in mine], [r.loss_mask for r in mine],
            gamma=1.0, lam=float(lam[e]), truncated=episode.truncated,
        )
        for row, out in zip(mine, gae, strict=True):
            torch.testing.assert_close(row.advantages, out.advantages.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_on_and_off(policy, episodes, shift_mean):
    critic = critic_from_policy(policy, seed=1)
    raw = Learner(_cfg("ppo"), policy, critic=critic).prepare(episodes)
    white = Learner(_cfg("ppo", whiten_advantages=True, whiten_shift_mean=shift_mean), policy, critic=critic)
    rows = white.prepare(episodes)
    a_raw, a_white = collate(raw).advantages, collate(rows).advantages
    mask = collate(rows).loss_mask
    assert batch_metrics(rows)["adv/std"] == pytest.approx(1.0, abs=1e-4)
    if shift_mean:
        assert batch_metrics(rows)["adv/mean"] == pytest.approx(0.0, abs=1e-5)
    else:  # rescaled only: every sign kept
        assert torch.equal(torch.sign(a_white[mask]), torch.sign(a_raw[mask]))
    assert not torch.allclose(a_raw, a_white)


def test_truncation_mask_drops_truncated_episodes_from_the_loss(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    rows = Learner(_cfg("ppo", truncation="mask"), policy, critic=critic).prepare(episodes)
    for row in rows:
        assert (row.num_policy_tokens == 0) == episodes[row.episode_index].truncated


class _Poisoned(torch.nn.Module):
    """A critic whose outputs at every position no token reads are ``poison``: position s is read only
    when token s + 1 is a policy token, so prompt, observation and padding positions are all poisoned.
    Each row's loss mask is looked up by its tokens."""

    def __init__(self, critic: torch.nn.Module, poison: float, rows: list[Row]) -> None:
        super().__init__()
        self.critic, self.poison = critic, poison
        self.masks = {tuple(r.token_ids.tolist()): r.loss_mask for r in rows}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, shared_prefix: int = 0
                ) -> torch.Tensor:
        out = self.critic(input_ids, attention_mask, shared_prefix=shared_prefix)  # read as the clean one is
        read = torch.zeros_like(out, dtype=torch.bool)
        for b in range(out.shape[0]):
            mask = self.masks[tuple(input_ids[b][attention_mask[b] == 1].tolist())]
            read[b, : mask.numel() - 1] = mask[1:]
        return torch.where(read, out, torch.full_like(out, self.poison))


@pytest.mark.parametrize("poison", [float("nan"), 1e6])
def test_critic_outputs_at_masked_and_padding_positions_never_reach_an_advantage(policy, episodes, poison):
    critic = critic_from_policy(policy, seed=1)
    clean = Learner(_cfg("ppo", micro=BUDGET), policy, critic=critic).prepare(episodes)
    poisoned = _Poisoned(critic, poison, rows_from_episodes(episodes))
    dirty = Learner(_cfg("ppo", micro=BUDGET), policy, critic=poisoned).prepare(episodes)
    assert any(r.num_tokens < max(x.num_tokens for x in dirty) for r in dirty)  # padding was there
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a.advantages, b.advantages) and torch.equal(a.returns, b.returns)
        assert torch.equal(a.old_values, b.old_values)


# ----------------------------------------------------------------------------------------------------
# KL, determinism, checkpoints, errors.


def test_kl_term_changes_the_loss_only_when_on(policy, episodes):
    reference = reference_from_policy(_policy(seed=5))  # a different policy, so the KL is not 0
    losses = {}
    for beta in (0.0, 0.5):
        p = copy.deepcopy(policy)
        learner = Learner(_cfg("grpo", kl_beta=beta), p, reference=reference)
        assert (learner.reference is None) == (beta == 0.0)
        rows = learner.prepare(episodes)
        assert (rows[0].ref_logprobs is None) == (beta == 0.0)
        losses[beta] = learner.update_policy(rows)
    off, on = losses[0.0], losses[0.5]
    assert "policy/kl" not in off and on["policy/kl"] > 0
    # token-mean, one mini-batch: the loss gains exactly beta * (mean KL over the policy tokens)
    assert on["policy/loss"] - off["policy/loss"] == pytest.approx(0.5 * on["policy/kl"], rel=1e-4)


def test_kl_as_a_reward_penalty_changes_the_advantages_not_the_loss_terms(policy, episodes):
    critic = critic_from_policy(policy, seed=1)
    reference = reference_from_policy(_policy(seed=5))
    plain = Learner(_cfg("ppo"), policy, critic=critic).prepare(episodes)
    cfg = _cfg("ppo", kl_beta=0.5, kl_penalty="reward")
    learner = Learner(cfg, policy, critic=critic, reference=reference)
    rows = learner.prepare(episodes)
    assert not torch.allclose(collate(plain).advantages, collate(rows).advantages)
    assert "policy/kl" not in learner.update_policy(rows)


def test_resuming_from_state_dict_gives_the_same_parameters(episodes):
    def run(steps: int, learner: Learner) -> None:
        for _ in range(steps):
            learner.step(episodes)

    def fresh(p):
        return Learner(_cfg("ppo", minibatches=2), p, critic=critic_from_policy(p, seed=1), seed=3)

    straight = fresh(_policy())
    run(2, straight)
    first = fresh(_policy())
    run(1, first)
    resumed = fresh(copy.deepcopy(first.policy))
    resumed.critic.load_state_dict(first.critic.state_dict())
    resumed.load_state_dict(first.state_dict())
    run(1, resumed)
    for a, b in zip(_snapshot(straight.policy, straight.critic), _snapshot(resumed.policy, resumed.critic),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_minibatches_split_episodes_deterministically(policy, episodes):
    rows = rows_from_episodes(episodes)
    a = Learner(_cfg("grpo", kl_beta=0.0), policy, seed=11).minibatches(rows, 2)
    b = Learner(_cfg("grpo", kl_beta=0.0), policy, seed=11).minibatches(rows, 2)
    assert a == b and sorted(i for mb in a for i in mb) == list(range(len(rows)))
    for mb in a:  # an episode's sub-traces stay together
        episodes_in = {rows[i].episode_index for i in mb}
        assert mb == [i for i, r in enumerate(rows) if r.episode_index in episodes_in]


def test_the_learner_refuses_missing_models(policy):
    with pytest.raises(ValueError, match="critic"):
        Learner(_cfg("ppo"), policy)
    with pytest.raises(ValueError, match="reference"):
        Learner(_cfg("grpo"), policy)  # kl_beta 0.04 by default
    with pytest.raises(ValueError, match="GRPO"):
        Learner(_cfg("grpo", kl_beta=0.0), policy, critic=critic_from_policy(policy, seed=0))
    with pytest.raises(ValueError, match="SharedValueHead"):
        Learner(_cfg("ppo"), policy, critic=SharedValueHead(_policy(seed=1)))


# ----------------------------------------------------------------------------------------------------
# Seq-mean aggregation: a sequence is an episode, whatever its number of sub-traces.

# One GRPO group: a compacted episode (two sub-traces) that got 1 and an uncompacted one that got 0.
COMPACTED_VS_NOT = [(((23, 4), (14, 6)), "a", 1.0, "terminated"), (((12, 3),), "a", 0.0, "terminated")]


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "subtrace-mean-token-mean"])
def test_seq_mean_modes_count_an_episode_once_however_it_was_compacted(mode):
    # At the first step every ratio is 1, so the surrogate of a token is -A of its episode; GRPO gives the
    # group (1, 0) advantages A = +-0.5 / std = +-1/sqrt(2) (sample std sqrt(0.5)).
    policy = _policy()
    episodes = _episodes(policy, spec=COMPACTED_VS_NOT)
    n0, n1 = (e.num_policy_tokens for e in episodes)
    a = 1 / math.sqrt(2)
    expected = {
        "seq-mean-token-mean": (-a + a) / 2,  # each episode's token mean, averaged over the 2 episodes
        "seq-mean-token-sum": (-a * n0 + a * n1) / 2,  # token sums over 2 episodes, not 3 sub-traces
        "subtrace-mean-token-mean": (-a - a + a) / 3,  # the per-window weighting: 2/3 for the compacted one
    }[mode]
    learner = Learner(_cfg("grpo", lr=1e-9, aggregation=mode, kl_beta=0.0), policy, seed=0)
    metrics = learner.step(episodes)
    assert metrics["policy/loss"] == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------------------------
# Truncation: bootstrap from the state the episode stopped in.


@pytest.mark.parametrize("critic_kind", ["separate", "shared"])
def test_bootstrap_values_the_state_after_the_withheld_observation(policy, critic_kind):
    # Regression: bootstrapping from the value at the last policy token made every return of a cut
    # episode reward-to-go + V_last (gamma = lam = 1) and left the last token's value loss no gradient.
    # Now: the critic's value after reading the last sub-trace and the observation a cap withheld.
    withheld = (11, 12, 13)
    episodes = [e if e.terminated else dataclasses.replace(e, final_observation_ids=withheld)
                for e in _episodes(policy)]
    shared = critic_kind == "shared"
    critic = SharedValueHead(policy, seed=1) if shared else critic_from_policy(policy, seed=1)
    learner = Learner(_cfg("ppo", truncation="bootstrap", critic_lam=1.0), policy, critic=critic)
    rows = learner.prepare(episodes)
    for e, episode in enumerate(episodes):
        mine = [r for r in rows if r.episode_index == e]
        end = 0.0
        if episode.truncated:  # a fresh forward over the state: last sub-trace + withheld observation
            ids = torch.tensor([list(episode.sub_traces[-1].token_ids) + list(withheld)])
            with torch.no_grad():
                end = float(critic(ids, torch.ones_like(ids))[0, -1])
            last_value = float(mine[-1].old_values[mine[-1].loss_mask][-1])
            assert abs(end - last_value) > 1e-4  # the case tells the two apart
        after = episode.reward + end
        for row in mine:
            for t in range(row.num_tokens):
                if row.loss_mask[t]:
                    assert float(row.returns[t]) == pytest.approx(after, abs=1e-5)
                    after -= float(row.rewards[t])


def test_evaluate_end_values_matches_one_forward_per_sequence(policy):
    critic = critic_from_policy(policy, seed=2)
    sequences = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2], [3, 3]]
    with torch.no_grad():
        expected = [float(critic(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0, -1])
                    for s in sequences]
    for max_tokens in (1, 10, 4096):  # one sequence per micro-batch, a few, all at once
        got = learner_module.evaluate_end_values(critic, sequences, max_tokens=max_tokens, pad_id=0)
        assert got.tolist() == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Summaries in or out of the loss.


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_train_summaries_false_takes_the_summaries_out_of_the_loss(policy, algorithm):
    # Every sub-trace that ends with policy tokens is taken to close with a summary: that trailing run.
    def with_summary(st: SubTrace) -> SubTrace:
        start = len(st.loss_mask)
        while start > 1 and st.loss_mask[start - 1] == 1:
            start -= 1
        return dataclasses.replace(st, summary_start=start) if start < len(st.loss_mask) else st

    episodes = [dataclasses.replace(e, sub_traces=tuple(with_summary(st) for st in e.sub_traces))
                for e in _episodes(policy)]
    summary_tokens = sum(st.num_tokens - st.summary_start for e in episodes for st in e.sub_traces
                         if st.summary_start is not None)
    assert summary_tokens > 0
    critic = critic_from_policy(policy, seed=1) if algorithm == "ppo" else None
    trained = Learner(_cfg(algorithm, kl_beta=0.0), policy, critic=critic).prepare(episodes)
    masked_cfg = _cfg(algorithm, kl_beta=0.0, train_summaries=False)
    masked = Learner(masked_cfg, policy, critic=critic).prepare(episodes)
    for a, b in zip(trained, masked, strict=True):
        start = episodes[a.episode_index].sub_traces[a.sub_trace_index].summary_start
        expected = a.loss_mask.clone()
        if start is not None:
            expected[start:] = False
        assert torch.equal(b.loss_mask, expected)
        assert torch.all(b.advantages[~b.loss_mask] == 0)
    dropped = sum(r.num_policy_tokens for r in trained) - sum(r.num_policy_tokens for r in masked)
    assert dropped == summary_tokens


# ----------------------------------------------------------------------------------------------------
# A sampler/learner mismatch: measured, and corrected by truncated importance sampling.


def test_tis_recomputes_old_logprobs_and_weights_each_token(policy):
    # The recorded (behaviour) log-probs are the policy's own minus 0.3 on every policy token, as a
    # sampler in another precision might record them: pi_old / mu = e^0.3 = 1.35, capped at 1.2.
    episodes = []
    for e in _episodes(policy):
        def shift(lps):
            return tuple(lp if lp is None else lp - 0.3 for lp in lps)

        subs = tuple(dataclasses.replace(st, logprobs=shift(st.logprobs)) for st in e.sub_traces)
        episodes.append(dataclasses.replace(e, sub_traces=subs))
    learner = Learner(_cfg("grpo", kl_beta=0.0, tis_cap=1.2), policy)
    rows = learner.prepare(episodes)
    own = rows_from_episodes(_episodes(policy))  # the policy's own log-probs, as recorded unperturbed
    for row, mine in zip(rows, own, strict=True):
        m = row.loss_mask
        torch.testing.assert_close(row.old_logprobs[m], mine.old_logprobs[m], atol=1e-5, rtol=0)
        torch.testing.assert_close(row.tis_weights[m], torch.full_like(row.tis_weights[m], 1.2))
        assert torch.all(row.tis_weights[~m] == 0)
    assert learner.mismatch["rollout/logprob_mismatch_mean"] == pytest.approx(0.3, abs=1e-4)
    assert learner.mismatch["rollout/logprob_mismatch_max"] == pytest.approx(0.3, abs=1e-4)
    assert learner.step(episodes)["skipped_updates"] == 0
    # Off (the torch backend, no cap): nothing is recomputed and the recorded log-probs stay.
    plain = Learner(_cfg("grpo", kl_beta=0.0), policy)
    rows = plain.prepare(episodes)
    assert plain.mismatch == {} and all(r.tis_weights is None for r in rows)
