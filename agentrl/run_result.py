"""What a run of the runner gives back: its tasks, the failures, the episodes and the run's metrics.

This module imports no torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.types import Episode

TRUNCATION_REASONS = (
    "max_turns", "max_total_tokens", "max_compactions", "context_full", "env_truncated", "env_error",
    "no_expert",
)


@dataclass(frozen=True)
class Task:
    """One episode to run: the environment's seed and options, and its GRPO group."""

    seed: int
    group_id: str
    options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    """A task that produced no episode, and why; ``env_broken``: its environment raised."""

    task: Task
    error: str
    env_broken: bool = False


@dataclass(frozen=True)
class RunResult:
    """The episodes of a run (in task order), the tasks that failed, and the run's metrics."""

    episodes: list[Episode]
    failures: list[Failure]
    metrics: dict[str, float]


def run_metrics(
    episodes: Sequence[Episode], failures: Sequence[Failure], sampled_tokens: int, seconds: float
) -> dict[str, float]:
    """Success rate, means of turns, compactions and tool errors, every cut counted, and throughput."""
    n = len(episodes)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    reasons = Counter(e.truncation_reason for e in episodes if e.truncated)
    metrics: dict[str, float] = {
        "episodes": float(n),
        "failed_tasks": float(len(failures)),
        "success_rate": mean([float(bool(e.info.get("success"))) for e in episodes]),
        "mean_reward": mean([e.reward for e in episodes]),
        "mean_turns": mean([float(e.num_turns) for e in episodes]),
        "mean_compactions": mean([float(e.num_compactions) for e in episodes]),
        "mean_tool_errors": mean([float(e.num_tool_errors) for e in episodes]),
        "tool_errors": float(sum(e.num_tool_errors for e in episodes)),
        "cut_responses": float(sum(int(e.info.get("cut_responses", 0)) for e in episodes)),
        "cut_summaries": float(sum(int(e.info.get("cut_summaries", 0)) for e in episodes)),
        "terminated": float(sum(e.terminated for e in episodes)),
        "policy_tokens": float(sum(e.num_policy_tokens for e in episodes)),
        "tokens": float(sum(e.num_tokens for e in episodes)),
        "seconds": seconds,
        "sampled_tokens_per_s": sampled_tokens / seconds if seconds > 0 else 0.0,
    }
    for reason in TRUNCATION_REASONS:
        metrics[f"truncated_{reason}"] = float(reasons.get(reason, 0))
    return metrics
