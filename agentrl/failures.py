"""Tasks that gave no episode: where their reasons are written, and when a run of them stops training.

A task fails when building its environment or its ``reset`` raised or hung, when its first prompt leaves
no room for a response, or when it ended before its first action (``agentrl.runner.Failure``). The
metrics count them (``rollout/failed_tasks``); the reasons are written here, one JSON object a line, to
``failures/iter_<N>.jsonl`` in the run directory (only for iterations that had any).

An iteration in which every task failed has nothing to learn from. One such iteration goes by (the
next one's tasks are other seeds), but ``rollout.max_empty_iterations`` of them in a row stop the run
with ``NoEpisodesError``, whose one line gives the most common reasons: otherwise an environment that
cannot start spins through empty iterations until the iteration count runs out and exits 0.

This module imports no torch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from agentrl.runner import Failure
from agentrl.textsafety import encodable_data

FAILURES_DIR = "failures"


class NoEpisodesError(ValueError):
    """Every task failed in too many iterations in a row; the message names the setting and the reasons."""


def save_failures(path: str | Path, failures: Sequence[Failure]) -> int:
    """Write each failure's task (seed, group, options) and reason as JSONL to ``path``; return how many."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for failure in failures:
            record = {"seed": failure.task.seed, "group_id": failure.task.group_id,
                      "options": dict(failure.task.options or {}), "error": failure.error,
                      "env_broken": failure.env_broken}
            record = encodable_data(json.loads(json.dumps(record, default=repr)))[0]  # a UTF-8 line
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(failures)


def common_reasons(failures: Sequence[Failure], *, top: int = 3, width: int = 160) -> str:
    """The ``top`` most common reasons, each with its count and cut to ``width`` characters, on one line."""
    counts = Counter(" ".join(f.error.split())[:width] for f in failures)
    parts = [f"{n} x {reason}" for reason, n in counts.most_common(top)]
    rest = len(counts) - len(parts)
    return "; ".join(parts) + (f"; and {rest} other reasons" if rest > 0 else "")


def check_not_empty(empty_in_a_row: int, limit: int, failures: Sequence[Failure], where: Path) -> None:
    """Raise ``NoEpisodesError`` once ``empty_in_a_row`` iterations without an episode reach ``limit``."""
    if empty_in_a_row < limit:
        return
    reasons = common_reasons(failures) if failures else "no task was run"
    raise NoEpisodesError(
        f"rollout.max_empty_iterations: every task failed in {empty_in_a_row} iterations in a row, so the "
        f"run stopped with nothing to learn from. Reasons in the last: {reasons} (all of them in {where})"
    )
