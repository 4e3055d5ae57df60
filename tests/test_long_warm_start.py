"""Slow (``-m slow``): the supervised warm start of each long setting reaches a stated success
(docs/results.md, "Long settings"). ledger_long: the command ``make demo-long`` runs, about 16 minutes on
one thread of an idle machine (34 with other jobs beside it). graph_nav_long: a curriculum of two
``agentrl sft`` runs, graph_nav small first, about 40 minutes on two threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sft_recipes import GRAPH_NAV, GRAPH_NAV_SFT

from agentrl.cli import main

LEDGER_LONG_SFT = [
    "--env", "ledger", "--env-option", "num_records=48", "--env-option", "verbosity=terse",
    "--env-option", "question=count", "--compaction", "policy", "--keep-last", "1",
    "--max-summary-tokens", "64", "--max-response-tokens", "48", "--context-budget", "1024",
    "--max-turns", "60", "--max-total-tokens", "8192", "--max-compactions", "10", "--episodes", "800",
    "--epochs", "1", "--lr", "1e-3", "--lr-schedule", "cosine", "--warmup-steps", "50",
    "--eval-episodes", "32", "--heldout-demos", "8",
]


@pytest.mark.slow
def test_the_ledger_long_warm_start_reaches_partial_success(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft"
    assert main(["sft", *LEDGER_LONG_SFT, "--out", str(out)]) == 0
    summary = json.loads((out / "sft.json").read_text())
    ev, last = summary["eval"], summary["epochs"][-1]
    with capsys.disabled():
        print(f"\nledger_long (count), 32 held-out episodes: untrained {ev['success_before']:.3f}  "
              f"SFT {ev['success_after']:.3f}; held-out NLL {last['heldout/nll']:.3f}")
    # measured on one thread, twice, the same to the digit: 0 -> 0.062 (2 of 32; 0.078 on 64), held-out NLL
    # 7.15 -> 0.019 (text 0.095)
    assert ev["success_before"] == 0 and ev["success_after"] >= 1 / 32
    assert last["heldout/nll"] < 0.05 and last["heldout/nll/text"] < 0.2


# graph_nav_long by a curriculum: graph_nav small with numbered, marked exits (tests/sft_recipes.py, with
# 32 held-out episodes instead of 64), then graph_nav_long's own settings from that checkpoint. Straight
# from the fresh model the long setting's 7.9 million demonstration tokens are too few; stage 1 alone
# scores 0 of 32 on it.
GRAPH_NAV_SMALL_SFT = ["--env", "graph_nav", *GRAPH_NAV, *GRAPH_NAV_SFT, "--eval-episodes", "32"]
GRAPH_NAV_LONG_SFT = [
    "--env", "graph_nav", "--env-option", "size=medium", "--env-option", "num_rooms=20",
    "--env-option", "numbered=true", "--env-option", "marked=true", "--env-option", "expert_explores=true",
    "--compaction", "policy", "--keep-last", "1", "--max-summary-tokens", "256",
    "--max-response-tokens", "48", "--context-budget", "2048", "--max-turns", "150",
    "--max-total-tokens", "24576", "--max-compactions", "16", "--episodes", "1200", "--epochs", "1",
    "--lr", "5e-4", "--lr-schedule", "cosine", "--warmup-steps", "50", "--eval-episodes", "32",
    "--heldout-demos", "8", "--seed", "1",
]


@pytest.mark.slow
def test_the_graph_nav_long_warm_start_reaches_partial_success(tmp_path: Path, capsys) -> None:
    small, long = tmp_path / "sft_small", tmp_path / "sft_long"
    assert main(["sft", *GRAPH_NAV_SMALL_SFT, "--out", str(small)]) == 0
    assert main(["sft", *GRAPH_NAV_LONG_SFT, "--model", str(small), "--out", str(long)]) == 0
    first = json.loads((small / "sft.json").read_text())["eval"]
    summary = json.loads((long / "sft.json").read_text())
    ev, last = summary["eval"], summary["epochs"][-1]
    with capsys.disabled():
        print(f"\ngraph_nav small, 32 held-out episodes: {first['success_before']:.3f} -> "
              f"{first['success_after']:.3f}; graph_nav_long, 32 held-out episodes: "
              f"{ev['success_before']:.3f} -> {ev['success_after']:.3f}; "
              f"held-out NLL {last['heldout/nll']:.3f} (text {last['heldout/nll/text']:.3f})")
    # measured on two threads: small 0 -> 0.406; long 0 -> 0.031 (1 of 32; the same model scored 6 of 64 on
    # other held-out seeds, 0.094), held-out NLL 3.21 -> 0.36 (argument 0.42, text, the summaries, 1.18)
    assert first["success_after"] >= 0.2
    assert ev["success_before"] == 0 and ev["success_after"] >= 1 / 32
    assert last["heldout/nll"] < 0.5 and last["heldout/nll/text"] < 1.5
