"""How the in-process rollout batches its sampling: ``rollout.batching``, static rounds or continuous.

- ``static`` (the default): ``agentrl.runner.Runner`` over the run's sampler (``rollout.backend``).
  Every episode in flight samples its turn in one batch, then the environments step one after the
  other; a round lasts as long as its longest action and its tools.
- ``continuous``: ``agentrl.continuous.ContinuousRunner`` over an ``agentrl.slot_sampler.SlotSampler``
  on the policy itself, one cache slot per episode in flight (``min(rollout.max_concurrent, episodes per
  iteration)``), each holding one context window (``rollout.context_budget`` tokens). A turn leaves
  the batch when it ends and its tools run on a thread pool while the others decode.

Both have what the train loop's rollout uses (``agentrl.rollout_shards.InProcessRollout``):
``run(make_env, tasks, seed=...)`` and ``sampler``. A continuous episode is a function of its task and
the iteration's sampling seed alone (``agentrl.continuous``), so a run with continuous batching is as
reproducible from ``run.seed`` as one with static rounds, and resumes the same way; its sampled episodes
are not the static rounds' (their draws are made differently), its greedy ones are.

Continuous batching needs the torch backend (``rollout.backend: torch``), the lean Qwen2 decode step
(the default models; another architecture is refused when the run is built) and an in-process rollout
(``distributed.rollout_workers: 0``); ``agentrl.config`` refuses the other combinations.
"""

from __future__ import annotations

from typing import Any

from agentrl.chat import ChatFormat
from agentrl.config import TrainConfig
from agentrl.continuous import ContinuousRunner
from agentrl.decode_step import Qwen2DecodeStep
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunnerConfig
from agentrl.sampling import Sampler
from agentrl.slot_sampler import SlotSampler

__all__ = ["RolloutRunner", "continuous_runner", "make_runner", "runner_on"]

RolloutRunner = Runner | ContinuousRunner


def make_runner(cfg: TrainConfig, sampler: Sampler, policy: Any, chat: ChatFormat, *,
                episodes: int | None = None) -> RolloutRunner:
    """The runner of ``rollout.batching``: static rounds over ``sampler``, or continuous batching over a
    slot sampler on ``policy`` (``sampler`` then unused) with room for ``episodes`` in flight (default:
    an iteration's) up to ``rollout.max_concurrent``. A model the lean decode step does not apply to
    raises a ``ValueError`` naming the field."""
    if cfg.rollout.batching == "static":
        return Runner(sampler, chat, cfg.to_runner_config())
    r = cfg.rollout
    return continuous_runner(policy, chat, cfg.to_runner_config(),
                             slots=min(r.max_concurrent, episodes or r.episodes_per_iteration),
                             field="rollout.batching")


def continuous_runner(model: Any, chat: ChatFormat, config: RunnerConfig, *, slots: int,
                      field: str) -> ContinuousRunner:
    """Continuous batching on ``model`` with ``slots`` episodes in flight, each slot holding one context
    window; a model the lean decode step does not apply to raises a ``ValueError`` naming ``field``."""
    reason = Qwen2DecodeStep.unsupported(model)
    if reason is not None:
        raise ValueError(f"{field}: continuous needs a Qwen2 model the lean decode step applies "
                         f"to ({reason}); use static")
    return ContinuousRunner(SlotSampler(model, slots=slots, capacity=config.context_budget + 1), chat, config)


def runner_on(runner: RolloutRunner, model: Any) -> RolloutRunner:
    """A runner like ``runner`` (the same batching, budgets and chat format) sampling with ``model``
    (the overlap's copy of the policy, ``agentrl.overlap``)."""
    if isinstance(runner, ContinuousRunner):
        s = runner.sampler
        assert isinstance(s, SlotSampler)
        return ContinuousRunner(SlotSampler(model, slots=s.slots, capacity=s.initial_capacity), runner.chat,
                                runner.config)
    return Runner(TorchSampler(model), runner.chat, runner.config)
