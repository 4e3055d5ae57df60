"""docs/tutorial.md, run as written: its YAML blocks are written to the files they name and its
commands run through the real CLI, from an environment class to a ``compare`` report."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"```(yaml|bash)\n(.*?)```", re.S)


def _steps(text: str) -> list[tuple[str, str]]:
    """The page's ``(kind, body)`` blocks in order; the text blocks (expected output) are left out."""
    return [(kind, body) for kind, body in BLOCK.findall(text)]


def test_the_tutorial_runs_from_an_env_class_to_a_compare_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    commands = []
    for kind, body in _steps(TUTORIAL.read_text()):
        if kind == "yaml":
            first = body.splitlines()[0]
            assert first.startswith("# "), f"a YAML block must name its file: {first!r}"
            path = tmp_path / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            continue
        for line in body.splitlines():
            if line.startswith("export PYTHONPATH="):
                value = line.split("=", 1)[1]
                assert value == "examples"  # the clone's examples/, where the tutorial's env lives
                monkeypatch.setenv("PYTHONPATH", str(ROOT / value))
                monkeypatch.syspath_prepend(str(ROOT / value))
            elif line.strip():
                assert line.startswith("agentrl "), line
                commands.append(shlex.split(line)[1:])
    assert [c[0] for c in commands] == ["init-model", "train", "compare"]
    for argv in commands:
        assert main(argv) == 0, argv

    out = capsys.readouterr()
    assert "guess_ppo: PPO, 1 critic-only iteration" in out.err  # the plan line the page shows
    records = read_metrics(tmp_path / "runs" / "guess" / "ppo_run")
    assert len(records) == 2  # the critic-only iteration, then run.iterations = 1
    assert all(r["rollout/compactions_mean"] >= 1 for r in records)  # a long task: every episode compacts
    assert all(r["rollout/sub_traces_mean"] >= 2 for r in records)
    report = (tmp_path / "runs" / "guess" / "compare" / "report.md").read_text()
    assert "**ppo against grpo**:" in report and "Welch's t-test" in report
    assert "| ppo | 2 |" in report and "| grpo | 2 |" in report
    assert f"PYTHONPATH={ROOT / 'examples'} agentrl compare" in report  # the reproduce command
    for arm in ("ppo", "grpo"):
        for seed in (0, 1):
            run = tmp_path / "runs" / "guess" / "compare" / arm / f"seed_{seed}"
            config = (run / "config.yaml").read_text()
            assert "custom_env:GuessNumber" in config and "max_number: 1000" in config
