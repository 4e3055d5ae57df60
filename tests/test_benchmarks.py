"""The benchmark scripts run and print their tables (tiny settings: numbers are not checked here, only
that each script works end to end), and the learner benchmark's FLOP count matches a hand count.
The TRL comparison runs only where the ``bench`` extra (trl) is installed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from transformers import Qwen2Config

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import learner_efficiency  # noqa: E402
import scaling  # noqa: E402


def test_forward_flops_hand_count() -> None:
    config = Qwen2Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    # per layer: q, o 4x4 each; k, v 4x2 each; MLP 3 x 4x8 -> 144 weights; 3 tokens -> 2 * 3 * 144 = 864;
    # attention 4 * 2 heads * 2 dims * 6 keys = 96; two layers 1920; LM head 2 * 3 * 10 * 4 = 240
    assert learner_efficiency.forward_flops(config, 3, 6, lm_head=True) == 2160
    assert learner_efficiency.forward_flops(config, 3, 6, lm_head=False) == 1920 + 2 * 3 * 4


def test_learner_efficiency_prints_its_table(capsys) -> None:
    assert learner_efficiency.main(["--episodes", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"padding fraction: 0\.\d{4}", out)
    assert re.search(r"^16 +\d+\.\d{3} +\d+ +\d+\.\d{2} +\d+\.\d +0\.\d{3}$", out, re.MULTILINE)
    assert "speed-up of the shared prefix" in out


def test_scaling_prints_its_table(capsys) -> None:
    assert scaling.main(["--turns", "2", "--episodes", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("base", "turns x", "batch x"))]
    assert [r[0] for r in rows] == ["base", "turns", "turns", "batch", "batch"]
    assert rows[0][-1] == "1.00" and rows[0][-5] == "1.00"  # the base against itself


def test_decode_step_prints_its_ratios(capsys) -> None:
    import decode_step

    assert decode_step.main(["--sizes", "tiny", "--batch", "1", "2", "--steps", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fixed-cost ratio lean/transformers \(tiny\): \d+\.\d\d$", out, re.MULTILINE)
    assert "same tokens on both paths (tiny): yes" in out


def test_continuous_batching_prints_its_ratios(capsys) -> None:
    import continuous_batching

    args = ["--episodes", "2", "--turns", "2", "--growth-turns", "1", "--repeats", "1", "--tool-ms", "1"]
    assert continuous_batching.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^throughput ratio continuous/static: \d+\.\d\d$", out, re.MULTILINE)
    growth_row = r"^\| continuous \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|$"
    assert re.search(growth_row, out, re.MULTILINE)


def test_grpo_against_trl_prints_its_ratio(capsys) -> None:
    pytest.importorskip("trl")
    import grpo_vs_trl

    assert grpo_vs_trl.main(["--steps", "1", "--rounds", "1", "--warmup", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ratio agentrl/TRL: \d+\.\d\d$", out, re.MULTILINE)
    assert "agentrl phases" in out and "TRL phases" in out


def test_multi_turn_grpo_against_trl_prints_its_ratio(capsys) -> None:
    pytest.importorskip("trl")
    import grpo_vs_trl_multiturn

    args = ["--steps", "1", "--rounds", "1", "--warmup", "1", "--profile", "--demos", "16", "--epochs", "4"]
    assert grpo_vs_trl_multiturn.main(args) == 0  # it exits if TRL's prompt ids differ from agentrl's
    out = capsys.readouterr().out
    assert re.search(r"^ratio agentrl/TRL: \d+\.\d\d$", out, re.MULTILINE)
    rows = re.findall(r"^(agentrl|TRL) +1 .* (\d+\.\d\d)$", out, re.MULTILINE)  # actions per episode
    assert [side for side, _ in rows] == ["agentrl", "TRL"] and all(1 <= float(n) <= 4 for _, n in rows)
    assert "agentrl phases" in out and "TRL phases" in out


def test_viewer_load_prints_its_ratios(capsys) -> None:
    import viewer_load

    assert viewer_load.main(["--episodes", "4", "--long-tokens", "4000", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run: 5 episodes")
    assert re.search(r"^index: whole-line parse / index = \d+\.\d\dx$", out, re.MULTILINE)
    page = r"^page: (skipped|\d+-token episode / \d+-token episode = \d+\.\d\dx)"
    assert re.search(page, out, re.MULTILINE)


def test_sandbox_overhead_prints_its_ratios(capsys) -> None:
    from agentrl.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    import sandbox_overhead

    assert sandbox_overhead.main(["--calls", "2", "--episodes", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("call:", "episode:"))]
    assert len(rows) == 3 and all(re.search(r" \d+\.\d\d +-?\d+\.\d\d$", r) for r in rows)


def test_scale_out_prints_its_ratios(capsys) -> None:
    import scale_out

    assert scale_out.main(["--episodes", "4", "--repeats", "1", "--iterations", "2", "--skip-workers",
                           "--delay", "0.01"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^iteration time .* ratio off/on: \d+\.\d\dx$", out, re.MULTILINE)
