"""The long settings (examples/*_long.yaml): an expert episode takes 40 or more turns and, under the
setting's own context window with ``policy`` compaction, three or more sub-traces on average; the expert
(which writes the summaries too, from ``state_digest``) solves every seed with no summary cut short.

Measured with the default tiny model's tokenizer on 16 seeds (the numbers the example headers quote):
ledger_long 49 turns and 6 sub-traces per episode; graph_nav_long about 60 turns and 3.8 sub-traces.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from agentrl.chat import ChatFormat
from agentrl.config import load_config
from agentrl.models import load_model
from agentrl.registry import make
from agentrl.runner import Runner, Task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("setting", ["ledger_long", "graph_nav_long"])
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_a_long_setting_needs_40_turns_and_3_windows(tiny_model_dir: Path, setting: str, algo: str) -> None:
    cfg = load_config(EXAMPLES / f"{algo}_{setting}.yaml")
    assert cfg.rollout.compaction.strategy == "policy"
    _, tokenizer = load_model(tiny_model_dir)
    runner = Runner(None, ChatFormat(tokenizer), cfg.to_runner_config())  # type: ignore[arg-type]
    tasks = [Task(seed, f"g{seed}") for seed in range(16)]
    result = runner.run(lambda: make(cfg.env.name, **cfg.env.options), tasks, teacher=True)
    episodes = result.episodes
    assert len(episodes) == 16 and not result.failures
    assert all(e.terminated and e.info["success"] for e in episodes)
    assert statistics.mean(e.num_turns for e in episodes) >= 40
    assert statistics.mean(len(e.sub_traces) for e in episodes) >= 3
    assert all(len(e.sub_traces) >= 2 for e in episodes)  # every episode is compacted at least once
    assert sum(e.info["cut_summaries"] for e in episodes) == 0


def test_code_fix_long_compacts_and_its_expert_still_succeeds(tiny_model_dir: Path) -> None:
    # The long code_fix setting under budgets that fit its expert's actions (a patch of a whole function
    # is up to ~500 tokens): 41 turns in 3 windows on every seed. With 64- or 256-token responses the
    # expert's patches are cut and the episode fails, so these are the budgets a long run needs.
    from agentrl.compaction import CompactionConfig
    from agentrl.runner import RunnerConfig
    from agentrl.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    _, tokenizer = load_model(tiny_model_dir)
    config = RunnerConfig(max_response_tokens=512, context_budget=8192, max_turns=120, max_compactions=40,
                          compaction=CompactionConfig("policy", keep_last_turns=1, max_summary_tokens=512))
    tasks = [Task(seed, f"g{seed}") for seed in range(4)]
    result = Runner(None, ChatFormat(tokenizer), config).run(  # type: ignore[arg-type]
        lambda: make("code_fix", setting="long"), tasks, teacher=True)
    assert len(result.episodes) == 4 and not result.failures
    assert all(e.terminated and e.info["success"] for e in result.episodes)
    assert all(e.num_turns >= 40 and len(e.sub_traces) >= 3 for e in result.episodes)
    assert sum(e.info["cut_responses"] + e.info["cut_summaries"] for e in result.episodes) == 0
