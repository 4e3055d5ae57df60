"""The algorithms' sections of the training configuration: ``ppo`` and ``grpo`` (docs/algorithms.md).

Their fields carry the names, the choices and the ranges of the keyword arguments of
``agentrl.advantages`` and ``agentrl.losses`` that they feed; ``agentrl.config`` builds them into the
``TrainConfig`` tree and checks the rules across sections. No torch here, as in ``agentrl.config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from agentrl.config_fields import Section

__all__ = ["Aggregation", "GAEMode", "GRPOSection", "KLKind", "PPOSection", "Truncation"]

# The choices of the math modules (which import torch); tests/test_config.py checks they stay equal to
# agentrl.losses.AGGREGATION_MODES / KL_KINDS and agentrl.advantages.TRUNCATION_MODES / EPISODE_GAE_MODES.
Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
    "subtrace-mean-token-mean",
]
KLKind = Literal["k1", "k2", "k3"]
Truncation = Literal["bootstrap", "mask", "zero"]
GAEMode = Literal["episode", "local"]


def _check_policy_fields(s: PPOSection | GRPOSection) -> None:
    """The clipped-surrogate, KL and aggregation fields PPO and GRPO share (ranges of agentrl.losses)."""
    s._check("epochs", s.epochs >= 1, "an int >= 1")
    s._check("minibatches", s.minibatches >= 1, "an int >= 1")
    s._check("clip_low", 0 <= s.clip_low < 1, "a number in [0, 1)")
    s._check("clip_high", s.clip_high >= 0, "a number >= 0")
    s._check("dual_clip", s.dual_clip is None or s.dual_clip > 1, "null or a number > 1")
    s._check("kl_beta", s.kl_beta >= 0, "a number >= 0")
    s._check("k3_max", s.k3_max is None or s.k3_max > 0, "null or a number > 0")
    s._check("horizon", s.horizon is None or s.horizon >= 1, "null or an int >= 1")
    s._check("tis_cap", s.tis_cap is None or s.tis_cap >= 1, "null or a number >= 1")


@dataclass(frozen=True)
class PPOSection(Section):
    """PPO with a critic: episode-level skip-observation GAE and a token-level loss (docs/algorithms.md).

    Attributes:
        gamma: discount per policy token, in [0, 1].
        critic_lam: GAE lambda of the critic's targets (returns), in [0, 1]; 1: Monte-Carlo targets.
        actor_lam: GAE lambda of the policy's advantages: a number in [0, 1], or ``adaptive`` for VAPO's
            length-adaptive ``1 - 1/(alpha * l)``, l the episode's policy tokens (decoupled lambda).
        alpha: the ``alpha`` of the length-adaptive lambda, > 0 (used when ``actor_lam`` is adaptive).
        gae_mode: ``episode`` (GAE chained across an episode's sub-traces) or ``local`` (each sub-trace
            alone, scaled by (gamma*lam)^(policy tokens after it)).
        truncation: a truncated episode ends as if terminated (``zero``, the default: a cut is a
            failure, its return the reward it got), ``bootstrap``s from the critic's value of the state
            it stopped in (after its last observation), or is dropped from the loss (``mask``).
        whiten_advantages: whiten the advantages over the batch's policy tokens before the loss.
        whiten_shift_mean: when whitening, subtract the mean (false: rescale only, keeping signs).
        value_pretrain_steps: critic-only iterations before the first policy update (the initial
            policy samples, the critic trains); not counted in ``run.iterations``.
        critic_updates: critic updates (passes over the batch's mini-batches) per iteration.
        epochs: passes of policy updates over each iteration's batch.
        minibatches: mini-batches per epoch (one optimiser step each); at most the episodes per iteration.
        clip_low: the ratio's lower clip is 1 - clip_low, in [0, 1).
        clip_high: the ratio's upper clip is 1 + clip_high, >= 0 (above clip_low: clip-higher, DAPO).
        dual_clip: null, or a number > 1 that caps a negative-advantage token's loss at dual_clip * |A|.
        value_clip: null, or a number > 0 bounding how far one update moves a value from the one GAE used.
        value_coef: weight of the value loss with a ``shared`` critic (one backbone, one loss), > 0.
        kl_beta: weight of the KL to the frozen reference policy, >= 0; 0: off, no reference loaded.
        kl_kind: the KL estimator: ``k1``, ``k2`` or ``k3``.
        kl_penalty: where the KL acts: ``loss`` (a loss term) or ``reward`` (a per-token reward penalty
            before GAE).
        k3_max: per-token cap on the k3 estimator; null: no cap.
        aggregation: how per-token losses become one: ``token-mean`` (the global token normaliser),
            ``seq-mean-token-mean``, ``seq-mean-token-sum`` or ``seq-mean-token-sum-norm`` (a sequence
            is an episode, all its sub-traces together), or ``subtrace-mean-token-mean`` (each
            sub-trace its own sequence; for comparison).
        horizon: the constant normaliser of ``seq-mean-token-sum-norm``; null: ``rollout.context_budget``.
        train_summaries: train the summaries the policy writes at a ``policy`` compaction with the
            episode's credit (true), or take them out of the loss (false; GAE skips them like
            observation tokens), for the ablation of what a trained summary adds.
        tis_cap: truncated importance sampling of a sampler/learner mismatch: the learner recomputes
            the old log-probs, uses them in the ratio, and weights each token by
            ``min(pi_old / mu_sampler, tis_cap)`` (docs/algorithms.md); null: off. >= 1.
    """

    SECTION: ClassVar[str] = "ppo"
    gamma: float = 1.0
    critic_lam: float = 1.0
    actor_lam: float | Literal["adaptive"] = "adaptive"
    alpha: float = 1.5
    gae_mode: GAEMode = "episode"
    truncation: Truncation = "zero"
    whiten_advantages: bool = False
    whiten_shift_mean: bool = True
    value_pretrain_steps: int = 0
    critic_updates: int = 1
    epochs: int = 1
    minibatches: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    value_clip: float | None = 0.2
    value_coef: float = 0.5
    kl_beta: float = 0.0
    kl_kind: KLKind = "k3"
    kl_penalty: Literal["loss", "reward"] = "loss"
    k3_max: float | None = 10.0
    aggregation: Aggregation = "token-mean"
    horizon: int | None = None
    train_summaries: bool = True
    tis_cap: float | None = None

    def _validate(self) -> None:
        self._check("gamma", 0 <= self.gamma <= 1, "a number in [0, 1]")
        self._check("critic_lam", 0 <= self.critic_lam <= 1, "a number in [0, 1]")
        self._check("actor_lam", self.actor_lam == "adaptive" or 0 <= self.actor_lam <= 1,  # type: ignore[operator]
                    "a number in [0, 1] or 'adaptive'")
        self._check("alpha", self.alpha > 0, "a number > 0")
        self._check("value_pretrain_steps", self.value_pretrain_steps >= 0, "an int >= 0")
        self._check("critic_updates", self.critic_updates >= 1, "an int >= 1")
        _check_policy_fields(self)
        self._check("value_clip", self.value_clip is None or self.value_clip > 0, "null or a number > 0")
        self._check("value_coef", self.value_coef > 0, "a number > 0")

    @property
    def uses_kl(self) -> bool:
        """Whether a KL term is on (and so a reference model is needed)."""
        return self.kl_beta > 0


@dataclass(frozen=True)
class GRPOSection(Section):
    """GRPO: group-normalised episode rewards broadcast to every policy token, no critic.

    Attributes:
        eps: added to the group's std, > 0.
        scale_by_std: divide by the group's std (GRPO) or not (Dr. GRPO).
        epochs: passes of policy updates over each iteration's batch.
        minibatches: mini-batches per epoch (one optimiser step each); at most the episodes per iteration.
        clip_low: the ratio's lower clip is 1 - clip_low, in [0, 1).
        clip_high: the ratio's upper clip is 1 + clip_high, >= 0.
        dual_clip: null, or a number > 1 that caps a negative-advantage token's loss at dual_clip * |A|.
        kl_beta: weight of the KL loss term to the frozen reference policy, >= 0; 0: off, no reference.
        kl_kind: the KL estimator: ``k1``, ``k2`` or ``k3`` (GRPO's).
        k3_max: per-token cap on the k3 estimator; null: no cap.
        aggregation: ``token-mean``, ``seq-mean-token-mean`` (the original GRPO), ``seq-mean-token-sum``
            or ``seq-mean-token-sum-norm`` (Dr. GRPO), a sequence being an episode (all its sub-traces);
            or ``subtrace-mean-token-mean`` (each sub-trace its own sequence; for comparison).
        horizon: the constant normaliser of ``seq-mean-token-sum-norm``; null: ``rollout.context_budget``.
        train_summaries: train the summaries the policy writes at a ``policy`` compaction with the
            episode's credit (true), or take them out of the loss (false; GAE skips them like
            observation tokens), for the ablation of what a trained summary adds.
        tis_cap: truncated importance sampling of a sampler/learner mismatch: the learner recomputes
            the old log-probs, uses them in the ratio, and weights each token by
            ``min(pi_old / mu_sampler, tis_cap)`` (docs/algorithms.md); null: off. >= 1.
    """

    SECTION: ClassVar[str] = "grpo"
    eps: float = 1e-6
    scale_by_std: bool = True
    epochs: int = 1
    minibatches: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    kl_beta: float = 0.04
    kl_kind: KLKind = "k3"
    k3_max: float | None = 10.0
    aggregation: Aggregation = "token-mean"
    horizon: int | None = None
    train_summaries: bool = True
    tis_cap: float | None = None

    def _validate(self) -> None:
        self._check("eps", self.eps > 0, "a number > 0")
        _check_policy_fields(self)

    @property
    def uses_kl(self) -> bool:
        """Whether a KL term is on (and so a reference model is needed)."""
        return self.kl_beta > 0
