"""Slow (``-m slow``): the supervised warm start of a long setting reaches a stated success, with the
command ``make demo-long`` runs (docs/results.md, "Long settings"). About 16 minutes on one thread of an
idle machine (34 with other jobs beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
