"""One-step off-policy overlap (``distributed.overlap``): the next iteration's rollout runs while this
one updates.

Without overlap an iteration samples with the newest weights, then updates; the sampler waits for the
learner and the learner for the sampler. With it, as soon as iteration k's episodes are in, iteration
k+1's rollout starts in a background thread with the weights the rollout holds then (those that sampled
k, the policy before update k), and iteration k updates meanwhile. The weights of update k are staged
by ``load_weights`` and given to the rollout only between two rollouts, never in the middle of one, so
iteration k+1 is sampled with the weights of k-1 and updated from those of k: a policy lag of exactly
one update, never more (``rollout/policy_lag``: 0 without overlap and at the first iteration, 1 after).

What it changes: the first importance ratio of an iteration is no longer 1 but ``pi_k / pi_{k-1}``;
the ratio uses the log-probs recorded at sampling time (the behaviour policy), which the clipped
surrogate bounds as usual. A run resumed from a checkpoint samples its first iteration with the
checkpoint's weights (lag 0), since the rollout that was in flight died with the run: with overlap, a
resumed run does not repeat an uninterrupted one exactly (without overlap it does).

The in-process torch sampler reads a policy object; with overlap it samples with a copy of the policy
(``PolicyCopy``), so the learner can update the original meanwhile. Ray workers and a vLLM engine keep
their own copies already.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from agentrl.rollout_shards import Rollout
from agentrl.runner import RunResult, Task


class PolicyCopy:
    """A copy of the policy that an in-process sampler reads, and the weights target that updates it."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self.model = copy.deepcopy(policy).eval()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the learner's weights into the copy."""
        with torch.no_grad():
            self.model.load_state_dict(dict(named_tensors))


class OverlappedRollout:
    """A ``Rollout`` that plays the next iteration in the background; see the module docstring.

    Args:
        inner: the rollout that plays (in process or Ray workers).
        target: where staged weights go between rollouts (``inner.sampler``, or a ``PolicyCopy``).
    """

    def __init__(self, inner: Rollout, target: Any) -> None:
        self.inner, self.target = inner, target
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlap-rollout")
        self.pending: tuple[int, Future[RunResult], int] | None = None  # (seed, future, weights version)
        self.staged: list[tuple[str, torch.Tensor]] | None = None
        self.version = 0  # updates whose weights the rollout holds
        self.updates = 0  # updates the learner has made

    @property
    def sampler(self) -> OverlappedRollout:
        """``push_weights`` stages the weights here (``load_weights``)."""
        return self

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stage an update's weights (a copy); the rollout gets them before its next iteration."""
        self.staged = [(name, tensor.detach().clone()) for name, tensor in named_tensors]
        self.updates += 1

    def _apply(self) -> None:
        if self.staged is not None:
            self.target.load_weights(iter(self.staged))
            self.staged, self.version = None, self.updates

    def run(self, tasks: Sequence[Task], *, seed: int,
            upcoming: tuple[Sequence[Task], int] | None = None) -> RunResult:
        """This iteration's result (prefetched, or played now), then the ``upcoming`` (tasks, seed)
        started in the background with the newest weights. ``metrics['policy_lag']``: updates between
        the weights that sampled it and the learner's now."""
        if self.pending is not None and self.pending[0] == seed:
            _, future, used = self.pending
            result = future.result()
        else:  # the first iteration, or after a resume
            self._apply()
            used, result = self.version, self.inner.run(tasks, seed=seed)
        self.pending = None
        self._apply()
        if upcoming is not None:
            next_tasks, next_seed = upcoming
            future = self.pool.submit(self.inner.run, next_tasks, seed=next_seed)
            self.pending = (next_seed, future, self.version)
        result.metrics["policy_lag"] = float(self.updates - used)
        return result

    def close(self) -> None:
        """Wait for a rollout in flight, then release the inner rollout."""
        self.pool.shutdown(wait=True)
        self.inner.close()
