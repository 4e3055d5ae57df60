"""Learning (slow): on easy arithmetic, GRPO and PPO both raise the reward of the random tiny model.

Run with ``make test-slow`` (about 3 minutes on 2 CPU cores). The task is the easiest arithmetic
(``a + b`` with a, b in 0..2) with a 4-token answer, so a random policy is right about 0.2% of the time
and an improving one is visible within a few hundred updates. The reward curve is printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
EASY = [
    "run.iterations=200", "run.checkpoint_every=0", "env.options.max_value=2", "env.options.operators=+",
    "rollout.max_response_tokens=4", "rollout.max_concurrent=64", "optim.actor_lr=1e-3",
]
SETTINGS = {  # 64 episodes per iteration for both
    "grpo_arithmetic.yaml": ["rollout.tasks_per_iteration=8", "rollout.group_size=8", "grpo.kl_beta=0"],
    "ppo_arithmetic.yaml": ["rollout.tasks_per_iteration=64", "rollout.group_size=1", "optim.critic_lr=1e-3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(SETTINGS))
def test_training_raises_the_reward_on_easy_arithmetic(tmp_path: Path, config: str, capsys) -> None:
    args = ["train", "--config", str(ROOT / "examples" / config), "--run-dir", str(tmp_path), "--quiet"]
    for item in EASY + SETTINGS[config]:
        args += ["--set", item]
    assert main(args) == 0
    rewards = [r["rollout/reward_mean"] for r in read_metrics(tmp_path)]
    windows = [sum(rewards[i : i + 20]) / 20 for i in range(0, len(rewards) - 19, 20)]
    with capsys.disabled():
        print(f"\n{config}: mean reward per 20 iterations: " + " ".join(f"{w:.3f}" for w in windows))
    first, last = sum(rewards[:40]) / 40, sum(rewards[-40:]) / 40
    assert last >= 0.1 and last >= 5 * first + 0.05, (first, last)
