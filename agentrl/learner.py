"""The learner: one iteration's update of the policy (and critic) from a batch of episodes.

What the train loop calls, in order, each iteration (``step`` does exactly this):

    rows = learner.prepare(episodes)          # old values, advantages, returns, reference log-probs
    metrics = batch_metrics(rows)             # adv/*, critic/explained_variance
    metrics |= learner.update_critic(rows)    # PPO: ppo.critic_updates passes over the mini-batches
    metrics |= learner.update_policy(rows)    # ppo/grpo.epochs x minibatches optimiser steps
    # (PPO, the first ppo.value_pretrain_steps iterations: learner.pretrain_critic(rows) instead of both
    #  updates; the policy does not move.)

PPO and GRPO differ only in ``prepare`` (where the advantages come from, docs/design.md sections 6 and 7):

- PPO: the critic's values of every row (``forward.evaluate_values``); skip-observation GAE over whole
  episodes (``advantages.episode_gae``) twice, with decoupled lambdas: advantages with ``ppo.actor_lam``
  (a number, or ``adaptive``: ``length_adaptive_lambda`` of each episode's policy tokens), returns (the
  critic's targets) with ``ppo.critic_lam``; optional whitening over the batch's policy tokens.
- GRPO: episode rewards normalised within their ``group_id`` (``group_advantages.grpo_advantages``),
  broadcast to every policy token of every sub-trace; no critic.

The policy update is the clipped surrogate (clip-higher, dual clip) plus ``kl_beta * kl`` to the frozen
reference when a KL term is on, aggregated with the configured mode. Each mini-batch is split into
micro-batches of at most ``optim.micro_batch_tokens`` padded tokens (``batch.pack``); each micro-batch
loss is divided by the mini-batch's global normaliser (policy tokens, rows) and back-propagated, so the
accumulated gradient is the mini-batch's whatever the micro-batch size (docs/design.md section 7).

Choices that affect results:
- ``old_logprobs`` are the log-probabilities recorded when sampling (the behaviour policy), not
  recomputed: any sampler/learner mismatch shows in the ratio. The learner recomputes log-probabilities
  at the rollout temperature (``rollout.temperature``; 0, greedy, means 1 as the sampler records).
- Mini-batches split **episodes** (all sub-traces of an episode in one mini-batch), in an order drawn
  from the learner's own ``torch.Generator`` (seeded by the caller, saved in ``state_dict``).
- A loss or gradient norm that is NaN or inf skips that optimiser step: the gradients are dropped, the
  parameters and optimiser state do not move, a warning is logged, ``skipped_updates`` counts it, and
  the run goes on with the next mini-batch.
- Gradients are clipped per model to ``optim.grad_clip`` (global norm); ``grad_norm/policy`` and
  ``grad_norm/critic`` are the norms before clipping.
- The critic loss is the clipped value loss with the token-mean over the mini-batch's policy tokens,
  whatever ``ppo.aggregation`` says for the policy.
- ``ppo.kl_penalty: reward`` subtracts ``kl_beta * kl(old_logprobs, ref_logprobs)`` from the per-token
  rewards before GAE; ``loss`` adds ``kl_beta * kl(logprobs, ref_logprobs)`` to the per-token loss.
- A shared critic (``SharedValueHead``): the critic passes (``update_critic``, ``pretrain_critic``) train
  the head alone on detached features, so the policy does not move before its own update; the policy
  update adds ``ppo.value_coef *`` the value loss to the policy loss, from the same forward pass, and
  steps the backbone (``actor_lr``) and the head (``critic_lr``) together.
- ``critic/explained_variance`` compares the values GAE used with the returns, over the policy tokens
  kept; 0 when the returns have no variance.
- The learner never switches the models' train/eval mode; the models should have no dropout active,
  or the ratio is not 1 at the first step.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from agentrl.advantages import episode_gae, length_adaptive_lambda
from agentrl.batch import (
    Batch,
    Row,
    collate,
    episode_policy_tokens,
    pack,
    padding_fraction,
    policy_row_count,
    policy_token_count,
    rows_from_episodes,
    set_fields,
    update_rows,
)
from agentrl.config import OptimSection, TrainConfig
from agentrl.critic import SharedValueHead
from agentrl.data_parallel import SINGLE, DataParallel
from agentrl.diagnostics import explained_variance
from agentrl.forward import (
    critic_values,
    evaluate_end_values,
    evaluate_logprobs,
    evaluate_values,
    policy_logprobs,
)
from agentrl.fsdp import full_optimizer_state, idle_pass, local, shard_optimizer_state
from agentrl.group_advantages import broadcast_to_tokens, grpo_advantages, whiten
from agentrl.losses import aggregate, kl, policy_loss, tis_weights, value_loss
from agentrl.metrics import ROLLOUT_LOGPROB_MISMATCH_MAX, ROLLOUT_LOGPROB_MISMATCH_MEAN
from agentrl.types import Episode

log = logging.getLogger(__name__)


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _adamw(params: list[torch.nn.Parameter], lr: float, optim: OptimSection) -> torch.optim.AdamW:
    if not params:
        raise ValueError("model: no parameter requires grad; nothing to train")
    return torch.optim.AdamW(params, lr=lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


class _Meter:
    """Sums of 0-d tensors (weighted) and counts, turned into floats once, at the end (one host sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor | float] = {}

    def add(self, name: str, value: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        value = value.detach().double() * weight
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def merge(self, other: _Meter) -> None:
        for name, total in other.sums.items():
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.weights[name] = self.weights.get(name, 0.0) + other.weights[name]

    def result(self, parallel: DataParallel = SINGLE) -> dict[str, float]:
        """The weighted means, over every rank's sums when ``parallel`` has several."""
        sums = {name: float(total) for name, total in self.sums.items()}
        weights = {name: float(w) for name, w in self.weights.items()}
        sums, weights = parallel.merge_sums(sums, weights)
        return {name: total / weights[name] if weights[name] > 0 else 0.0 for name, total in sums.items()}


# ----------------------------------------------------------------------------------------------------
# Batch statistics.


def _masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of ``x`` over ``mask``; (0, 0) with no mask-1 entry."""
    values = x[mask].double()
    if values.numel() == 0:
        return 0.0, 0.0
    return float(values.mean()), float(values.std(correction=0))


def batch_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """Statistics of prepared rows over their policy tokens: ``adv/mean``, ``adv/std``, and for PPO
    ``critic/value_mean``, ``critic/return_mean`` and ``critic/explained_variance`` (``1 - Var(R - V) /
    Var(R)`` with V the values GAE used; 0 when the returns have (numerically) no variance: a std below
    ``1e-6`` times their scale, e.g. all rewards 0, where float rounding alone would make the ratio
    explode)."""
    batch = collate(rows)
    out: dict[str, float] = {}
    if batch.advantages is not None:
        out["adv/mean"], out["adv/std"] = _masked_moments(batch.advantages, batch.loss_mask)
    if batch.old_values is not None and batch.returns is not None:
        m = batch.loss_mask
        out["critic/value_mean"], _ = _masked_moments(batch.old_values, m)
        out["critic/return_mean"], _ = _masked_moments(batch.returns, m)
        out["critic/explained_variance"] = explained_variance(batch.returns[m], batch.old_values[m])
    return out


# ----------------------------------------------------------------------------------------------------
# The learner.


class Learner:
    """One iteration's update of a policy (and a critic) from episodes; see the module docstring.

    Args:
        cfg: the training config; reads ``algorithm``, ``ppo`` or ``grpo``, ``optim``,
            ``rollout.temperature`` and ``horizon``.
        policy: the Hugging Face causal LM being trained, on its device.
        critic: PPO: a ``critic.ValueModel`` (separate) or a ``critic.SharedValueHead`` on ``policy``;
            GRPO: None.
        reference: the frozen reference policy (``critic.reference_from_policy``); required exactly when
            ``cfg.needs_reference`` (a KL term is on), ignored otherwise.
        seed: seeds the mini-batch order (the learner's own generator; the global RNG is untouched).
        pad_id: token id written at padding (any id in the vocabulary).
        parallel: this process's learner rank (``agentrl.data_parallel``): each rank updates on its share
            of every mini-batch, with normalisers, gradients and metrics summed over the ranks.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        policy: torch.nn.Module,
        *,
        critic: torch.nn.Module | None = None,
        reference: torch.nn.Module | None = None,
        seed: int = 0,
        pad_id: int = 0,
        parallel: DataParallel = SINGLE,
    ) -> None:
        if cfg.needs_critic and critic is None:
            raise ValueError("critic: PPO needs a critic (critic.critic_from_policy or SharedValueHead)")
        if not cfg.needs_critic and critic is not None:
            raise ValueError("critic: GRPO has no critic; pass None")
        if cfg.needs_reference and reference is None:
            raise ValueError(f"reference: {cfg.algorithm}.kl_beta > 0 needs a frozen reference policy")
        self.shared = isinstance(critic, SharedValueHead)
        if self.shared and critic.policy is not policy:  # type: ignore[union-attr]
            raise ValueError("critic: a SharedValueHead must sit on the policy being trained")
        self.cfg, self.policy, self.critic = cfg, policy, critic
        self.reference = reference if cfg.needs_reference else None
        self.pad_id = pad_id
        self.parallel = parallel
        # Shared prefixes are read once (optim.shared_prefix): policy_logprobs does it for Hugging Face
        # models; a critic does it when its forward takes ``shared_prefix`` (agentrl.critic's do).
        takes = critic is not None and "shared_prefix" in inspect.signature(critic.forward).parameters
        self.critic_prefix = cfg.optim.shared_prefix if takes else 0
        self.device = next(policy.parameters()).device
        self.temperature = cfg.rollout.temperature or 1.0  # 0 (greedy) is recorded as temperature 1
        self.policy_optimizer = _adamw(_trainable(policy), cfg.optim.actor_lr, cfg.optim)
        self.critic_optimizer = (
            None if critic is None else _adamw(_trainable(critic), cfg.optim.critic_lr, cfg.optim)
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.pretrain_steps_done = 0
        self.mismatch: dict[str, float] = {}  # the last prepare's sampler/learner log-prob gap
        self.skipped_updates = 0  # over the whole run; the metrics give each call's

    # ------------------------------------------------------------------------------------------------
    # Preparing the batch.

    def prepare(self, episodes: Sequence[Episode]) -> list[Row]:
        """Rows (one per sub-trace) carrying everything the updates read: ``advantages``; PPO also
        ``old_values`` and ``returns``, and ``loss_mask`` narrowed to the GAE mask; ``ref_logprobs`` when
        a KL term is on. ``old_logprobs`` are the episodes' recorded ones. No gradient is taken."""
        if not episodes:
            raise ValueError("episodes: expected at least one episode")
        rows = rows_from_episodes(episodes, train_summaries=self.cfg.algorithm_section.train_summaries)
        rows = self._recompute_old_logprobs(rows)
        if self.reference is not None:
            ref = self._shared(lambda mine: evaluate_logprobs(
                self.reference, mine, temperature=self.temperature,
                **self._eval_kwargs(self.cfg.optim.shared_prefix)), rows)
            rows = set_fields(rows, ref_logprobs=ref)
        if self.cfg.algorithm == "ppo":
            return self._prepare_ppo(episodes, rows)
        return self._prepare_grpo(episodes, rows)

    def _recompute_old_logprobs(self, rows: list[Row]) -> list[Row]:
        """With a rollout engine of its own (``rollout.backend: vllm``) or ``tis_cap`` set: recompute the
        sampled tokens' log-probs with the learner (one no-grad pass), measure the mismatch
        (``self.mismatch``: ``rollout/logprob_mismatch_mean`` and ``_max`` over policy tokens), and with
        ``tis_cap`` put the recomputed ones in the ratio and the truncated IS weights on the rows."""
        cap = self.cfg.algorithm_section.tis_cap
        self.mismatch = {}
        if self.cfg.rollout.backend == "torch" and cap is None:
            return rows
        learner = self._shared(lambda mine: evaluate_logprobs(
            self.policy, mine, temperature=self.temperature,
            **self._eval_kwargs(self.cfg.optim.shared_prefix)), rows)
        pairs = zip(rows, learner, strict=True)
        gaps = torch.cat([(lp - r.old_logprobs.to(lp))[r.loss_mask].abs() for r, lp in pairs])
        if gaps.numel():
            self.mismatch = {ROLLOUT_LOGPROB_MISMATCH_MEAN: float(gaps.double().mean()),
                             ROLLOUT_LOGPROB_MISMATCH_MAX: float(gaps.max())}
        if cap is None:
            return rows
        weights = [tis_weights(lp[None], r.old_logprobs[None].to(lp), r.loss_mask[None], cap=cap)[0]
                   for r, lp in zip(rows, learner, strict=True)]
        return set_fields(rows, old_logprobs=learner, tis_weights=weights)

    def _shared(self, evaluate: Callable[[list[Row]], list[torch.Tensor]], rows: list[Row]
                ) -> list[torch.Tensor]:
        """``evaluate(rows)`` (one tensor per row, no gradient), each ddp rank evaluating its share of
        the episodes and every rank getting all of them back (one gather), so that M ranks do the work
        once, not M times. With FSDP2 every rank evaluates every row: the ranks' passes must match."""
        parallel = self.parallel
        if parallel.world == 1 or parallel.fsdp:
            return evaluate(rows)
        mine = set(parallel.shard(sorted({row.episode_index for row in rows})))
        indices = [i for i, row in enumerate(rows) if row.episode_index in mine]
        values = evaluate([rows[i] for i in indices]) if indices else []
        out: list[torch.Tensor | None] = [None] * len(rows)
        for part, tensors in parallel.gather((indices, [v.cpu() for v in values])):
            for i, tensor in zip(part, tensors, strict=True):
                out[i] = tensor.to(rows[i].token_ids.device)
        return out  # type: ignore[return-value]

    def _eval_kwargs(self, shared_prefix: int) -> dict[str, Any]:
        return {"max_tokens": self.cfg.optim.micro_batch_tokens, "pad_id": self.pad_id, "device": self.device,
                "shared_prefix": shared_prefix}

    def _prepare_ppo(self, episodes: Sequence[Episode], rows: list[Row]) -> list[Row]:
        ppo = self.cfg.ppo
        values = self._shared(lambda mine: evaluate_values(
            self.critic, mine, **self._eval_kwargs(self.critic_prefix)), rows)
        rows = set_fields(rows, old_values=values)
        batch = collate(rows, pad_id=self.pad_id)
        rewards = batch.rewards
        if ppo.uses_kl and ppo.kl_penalty == "reward":
            mask = batch.loss_mask
            penalty = kl(batch.old_logprobs, batch.ref_logprobs, ppo.kl_kind, mask=mask, k3_max=ppo.k3_max)
            rewards = rewards - ppo.kl_beta * penalty
        common = {
            "gamma": ppo.gamma,
            "truncated": torch.tensor([e.truncated for e in episodes]),
            "truncation": ppo.truncation,
            "mode": ppo.gae_mode,
            "bootstrap_values": self.end_values(episodes) if ppo.truncation == "bootstrap" else None,
        }
        args = (rewards, batch.old_values, batch.loss_mask, batch.episode_index)
        actor = episode_gae(*args, lam=self.actor_lam(episodes), **common)
        critic = episode_gae(*args, lam=ppo.critic_lam, **common)
        advantages = actor.advantages
        if ppo.whiten_advantages:
            advantages = whiten(advantages, actor.mask, shift_mean=ppo.whiten_shift_mean)
        return update_rows(rows, batch, advantages=advantages, returns=critic.returns, loss_mask=actor.mask)

    def end_values(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """(E,) the critic's value of the state each truncated episode stopped in: its last sub-trace
        followed by its ``final_observation_ids`` (the observation a cap withheld); 0 for the others.
        One more critic evaluation per truncated episode; what ``ppo.truncation: bootstrap`` uses."""
        cut = [e for e, episode in enumerate(episodes) if episode.truncated]
        out = torch.zeros(len(episodes), dtype=torch.float64)
        if cut:
            states = [episodes[e].sub_traces[-1].token_ids + episodes[e].final_observation_ids for e in cut]
            values = evaluate_end_values(self.critic, states, max_tokens=self.cfg.optim.micro_batch_tokens,
                                         pad_id=self.pad_id, device=self.device)
            out[cut] = values.double().cpu()
        return out

    def actor_lam(self, episodes: Sequence[Episode]) -> float | torch.Tensor:
        """The policy's GAE lambda: ``ppo.actor_lam``, or with ``adaptive`` an (E,) tensor
        ``1 - 1 / (alpha * l_e)``, l_e episode e's policy tokens over all its sub-traces (VAPO)."""
        ppo = self.cfg.ppo
        if ppo.actor_lam != "adaptive":
            return float(ppo.actor_lam)
        lengths = torch.tensor([e.num_policy_tokens for e in episodes], dtype=torch.float64)
        return length_adaptive_lambda(lengths, ppo.alpha)

    def _prepare_grpo(self, episodes: Sequence[Episode], rows: list[Row]) -> list[Row]:
        grpo = self.cfg.grpo
        batch = collate(rows, pad_id=self.pad_id)
        rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
        group_ids = [e.group_id for e in episodes]
        per_episode = grpo_advantages(rewards, group_ids, eps=grpo.eps, scale_by_std=grpo.scale_by_std)
        advantages = broadcast_to_tokens(per_episode, batch.episode_index, batch.loss_mask)
        return update_rows(rows, batch, advantages=advantages)

    # ------------------------------------------------------------------------------------------------
    # Mini-batches and optimiser steps.

    def minibatches(self, rows: Sequence[Row], count: int) -> list[list[int]]:
        """Row indices of ``count`` mini-batches (fewer if there are fewer episodes): the episodes in an
        order drawn from the learner's generator, cut into near-equal runs; rows in their given order."""
        episode_ids = sorted({row.episode_index for row in rows})
        order = torch.randperm(len(episode_ids), generator=self.generator)
        out = []
        for part in torch.tensor_split(order, min(count, len(episode_ids))):
            chosen = {episode_ids[i] for i in part.tolist()}
            out.append([i for i, row in enumerate(rows) if row.episode_index in chosen])
        return out

    def _mine(self, rows: Sequence[Row], indices: Sequence[int]) -> list[Row]:
        """This rank's rows of the mini-batch ``indices``: those of its share of the episodes (all of them
        in a single process)."""
        chosen = [rows[i] for i in indices]
        if self.parallel.world == 1:
            return chosen
        mine = set(self.parallel.shard(list(dict.fromkeys(row.episode_index for row in chosen))))
        return [row for row in chosen if row.episode_index in mine]

    def _step(
        self,
        rows: Sequence[Row],
        micro_loss: Callable[[Batch, _Meter], torch.Tensor],
        models: Sequence[tuple[str, torch.nn.Module, torch.optim.Optimizer]],
        meter: _Meter,
    ) -> bool:
        """One optimiser step on the mini-batch ``rows``: backward per micro-batch, clip, step; or, on a
        non-finite loss or gradient norm, drop the gradients, skip the step and return False. The step's
        metrics reach ``meter`` only when it is taken."""
        for _, _, optimizer in models:
            optimizer.zero_grad(set_to_none=True)
        step_meter = _Meter()
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        micro_batches = pack(rows, max_tokens=self.cfg.optim.micro_batch_tokens)
        # FSDP2's collectives need every rank to run as many passes: the missing ones idle (agentrl.fsdp)
        idle = (self.parallel.global_max(len(micro_batches), self.device) - len(micro_batches)
                if self.parallel.fsdp else 0)
        for mb in micro_batches:
            batch = collate(rows, mb.indices, pad_id=self.pad_id).to(self.device)
            loss = micro_loss(batch, step_meter)
            finite &= torch.isfinite(loss.detach())
            total += loss.detach().double()
            loss.backward()
        for _ in range(idle):
            for _, model, _ in models:
                idle_pass(model, self.device)
        # one update over the ranks: the global loss (any rank's non-finite loss makes it non-finite on
        # every rank, so all skip together) and the summed gradients, before the same clipping
        finite &= torch.isfinite(self.parallel.sum_(total))
        self.parallel.sum_gradients(p for _, m, _ in models for p in _trainable(m))
        max_norm = self.cfg.optim.grad_clip or float("inf")
        norms = {name: local(torch.nn.utils.clip_grad_norm_(_trainable(m), max_norm))  # FSDP2: a DTensor
                 for name, m, _ in models}
        for norm in norms.values():
            finite &= torch.isfinite(norm)
        if not bool(finite):  # one host sync per optimiser step
            log.warning("non-finite loss or gradient norm (%s); update skipped", ", ".join(norms))
            for _, _, optimizer in models:
                optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            return False
        for _, _, optimizer in models:
            optimizer.step()
        step_meter.add(f"{models[0][0]}/loss", total)
        step_meter.add("perf/padding_fraction", torch.tensor(padding_fraction(micro_batches)))
        for name, norm in norms.items():
            step_meter.add(f"grad_norm/{name}", norm)
        meter.merge(step_meter)
        return True

    # ------------------------------------------------------------------------------------------------
    # The critic.

    def update_critic(self, rows: Sequence[Row]) -> dict[str, float]:
        """PPO: ``ppo.critic_updates`` passes over the rows' mini-batches, one critic optimiser step each
        (clipped value loss, token-mean over the mini-batch's policy tokens). Returns ``critic/loss``,
        ``critic/clip_frac``, ``grad_norm/critic`` and ``skipped_updates``."""
        if self.critic is None or self.critic_optimizer is None:
            raise ValueError("update_critic: GRPO has no critic")
        meter, skipped = _Meter(), 0
        models = [("critic", self.critic, self.critic_optimizer)]
        for _ in range(self.cfg.ppo.critic_updates):
            for indices in self.minibatches(rows, self.cfg.ppo.minibatches):
                chosen = self._mine(rows, indices)
                skipped += not self._step(chosen, self._critic_loss_fn(chosen), models, meter)
        return meter.result(self.parallel) | {"skipped_updates": float(skipped)}

    def pretrain_critic(self, rows: Sequence[Row]) -> dict[str, float]:
        """Value pre-training: the critic's update alone (``update_critic``), for the first
        ``ppo.value_pretrain_steps`` iterations, before the policy's first update."""
        metrics = self.update_critic(rows)
        self.pretrain_steps_done += 1
        return metrics | {"critic/pretraining": 1.0}

    def _critic_model(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        critic = self.critic
        if isinstance(critic, SharedValueHead):
            return lambda ids, mask, **kw: critic(ids, mask, detach_backbone=True, **kw)
        return critic  # type: ignore[return-value]

    def _critic_loss_fn(self, rows: Sequence[Row]) -> Callable[[Batch, _Meter], torch.Tensor]:
        """The micro-batch critic loss of the mini-batch ``rows`` (its normaliser bound in)."""
        n = self.parallel.global_count(policy_token_count(rows), self.device)
        model = self._critic_model()

        def loss_fn(batch: Batch, meter: _Meter) -> torch.Tensor:
            values = critic_values(model, batch, shared_prefix=self.critic_prefix)
            loss, metrics = self._value_loss(values, batch, n)
            meter.add("critic/clip_frac", metrics["clipfrac"], batch.num_policy_tokens)
            return loss

        return loss_fn

    def _value_loss(
        self, values: torch.Tensor, batch: Batch, num_tokens: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_token, metrics = value_loss(
            values, batch.old_values, batch.returns, batch.loss_mask, clip=self.cfg.ppo.value_clip
        )
        return aggregate(per_token, batch.loss_mask, "token-mean", num_tokens=num_tokens), metrics

    # ------------------------------------------------------------------------------------------------
    # The policy.

    def update_policy(self, rows: Sequence[Row]) -> dict[str, float]:
        """``epochs`` passes over the rows' ``minibatches`` mini-batches, one policy optimiser step each
        (with a shared critic, the head steps too). Returns ``policy/*`` metrics (``loss``, ``clip_frac``,
        ``dual_clip_frac``, ``approx_kl``, ``ratio_mean``, ``entropy``, ``kl`` when a KL loss is on),
        ``grad_norm/policy`` and ``skipped_updates`` (names as in docs/metrics.md). With a shared critic,
        ``policy/loss`` includes ``ppo.value_coef *`` the value loss, and ``grad_norm/critic`` is the
        head's."""
        algo = self.cfg.algorithm_section
        meter, skipped = _Meter(), 0
        models: list[tuple[str, torch.nn.Module, torch.optim.Optimizer]] = [
            ("policy", self.policy, self.policy_optimizer)
        ]
        if self.shared:
            models.append(("critic", self.critic, self.critic_optimizer))  # type: ignore[arg-type]
        for _ in range(algo.epochs):
            for indices in self.minibatches(rows, algo.minibatches):
                chosen = self._mine(rows, indices)
                skipped += not self._step(chosen, self._policy_loss_fn(chosen), models, meter)
        return meter.result(self.parallel) | {"skipped_updates": float(skipped)}

    def _kl_in_loss(self) -> bool:
        algo = self.cfg.algorithm_section
        return algo.uses_kl and (self.cfg.algorithm == "grpo" or self.cfg.ppo.kl_penalty == "loss")

    def _policy_loss_fn(self, rows: Sequence[Row]) -> Callable[[Batch, _Meter], torch.Tensor]:
        """The micro-batch policy loss of the mini-batch ``rows`` (its normalisers bound in)."""
        algo = self.cfg.algorithm_section
        n = self.parallel.global_count(policy_token_count(rows), self.device)
        # A sequence of the seq-mean modes is an episode (all its sub-traces), so that compaction never
        # changes an episode's weight; subtrace-mean-token-mean counts rows instead, for comparison.
        episode_tokens = episode_policy_tokens(rows)
        per_row = algo.aggregation == "subtrace-mean-token-mean"
        seqs = policy_row_count(rows) if per_row else sum(count > 0 for count in episode_tokens.values())
        seqs = self.parallel.global_count(seqs, self.device)

        def loss_fn(batch: Batch, meter: _Meter) -> torch.Tensor:
            out, values = self._forward(batch)
            per_token, metrics = policy_loss(
                out.logprobs, batch.old_logprobs, batch.advantages, batch.loss_mask,
                clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
            )
            if batch.tis_weights is not None:  # truncated IS of the sampler/learner mismatch
                per_token = per_token * batch.tis_weights
            tokens = batch.num_policy_tokens
            if self._kl_in_loss():
                mask = batch.loss_mask
                k = kl(out.logprobs, batch.ref_logprobs, algo.kl_kind, mask=mask, k3_max=algo.k3_max)
                per_token = per_token + algo.kl_beta * k
                meter.add("policy/kl", k.sum() / tokens.clamp_min(1), tokens)
            seq_tokens = torch.tensor([episode_tokens[e] for e in batch.episode_index.tolist()],
                                      device=batch.loss_mask.device)
            loss = aggregate(
                per_token, batch.loss_mask, algo.aggregation,
                num_tokens=n, num_seqs=seqs, horizon=self.cfg.horizon, seq_tokens=seq_tokens,
            )
            if values is not None:
                vloss, vmetrics = self._value_loss(values, batch, n)
                loss = loss + self.cfg.ppo.value_coef * vloss
                meter.add("critic/clip_frac", vmetrics["clipfrac"], tokens)
            for name in ("clipfrac", "dual_clipfrac", "approx_kl", "ratio_mean"):
                meter.add(f"policy/{name.replace('clipfrac', 'clip_frac')}", metrics[name], tokens)
            meter.add("policy/entropy", out.entropy.sum() / tokens.clamp_min(1), tokens)  # type: ignore[union-attr]
            return loss

        return loss_fn

    def _forward(self, batch: Batch) -> tuple[Any, torch.Tensor | None]:
        """The policy's aligned log-probs and entropies, and with a shared critic the aligned values, from
        one forward pass."""
        if not self.shared:
            out = policy_logprobs(self.policy, batch, temperature=self.temperature, with_entropy=True,
                                  shared_prefix=self.cfg.optim.shared_prefix)
            return out, None
        logits, raw_values = self.critic.policy_and_values(  # type: ignore[union-attr]
            batch.input_ids, batch.attention_mask, shared_prefix=self.cfg.optim.shared_prefix
        )
        out = policy_logprobs(lambda **_: logits, batch, temperature=self.temperature, with_entropy=True)
        return out, critic_values(lambda *_: raw_values, batch)

    # ------------------------------------------------------------------------------------------------
    # One iteration, and checkpoints.

    def step(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """One iteration: ``prepare``, then PPO's critic passes (``pretrain_critic`` alone while fewer than
        ``ppo.value_pretrain_steps`` pre-training steps are done) and the policy update. Returns the
        merged metrics, with ``skipped_updates`` summed."""
        rows = self.prepare(episodes)
        metrics = batch_metrics(rows)
        skipped = 0.0
        if self.cfg.algorithm == "ppo" and self.pretrain_steps_done < self.cfg.ppo.value_pretrain_steps:
            return metrics | self.pretrain_critic(rows)
        parts = [self.update_critic(rows)] if self.cfg.algorithm == "ppo" else []
        parts.append(self.update_policy(rows))
        for part in parts:
            skipped += part.pop("skipped_updates", 0.0)
            metrics |= part
        return metrics | {"skipped_updates": skipped}

    def state_dict(self) -> dict[str, Any]:
        """The learner's state for a checkpoint: optimiser states, the mini-batch generator, counters. With
        FSDP2 the optimiser states are gathered whole (every rank calls it), the format of one rank's."""
        def whole(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
            return full_optimizer_state(optimizer) if self.parallel.fsdp else optimizer.state_dict()

        return {
            "policy_optimizer": whole(self.policy_optimizer),
            "critic_optimizer": None if self.critic_optimizer is None else whole(self.critic_optimizer),
            "generator": self.generator.get_state(),
            "pretrain_steps_done": self.pretrain_steps_done,
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output (the models' weights are restored separately); with FSDP2 the
        whole optimiser states are cut as the parameters are."""
        def load(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
            sharded = self.parallel.fsdp
            optimizer.load_state_dict(shard_optimizer_state(optimizer, saved) if sharded else saved)

        load(self.policy_optimizer, state["policy_optimizer"])
        if (state["critic_optimizer"] is None) != (self.critic_optimizer is None):
            raise ValueError("state: the checkpoint's critic optimiser does not match this learner's critic")
        if self.critic_optimizer is not None:
            load(self.critic_optimizer, state["critic_optimizer"])
        self.generator.set_state(state["generator"])
        self.pretrain_steps_done = int(state["pretrain_steps_done"])
        self.skipped_updates = int(state["skipped_updates"])

