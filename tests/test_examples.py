"""The examples run, and the tutorial's code blocks are verbatim pieces of the example they teach."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_custom_env_example_runs_and_the_expert_solves_every_seed() -> None:
    out = subprocess.run(
        [sys.executable, "examples/custom_env.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "check_env: ok"
    seeds = [line for line in lines if line.startswith("seed ")]
    assert len(seeds) == 5 and all("success True" in line for line in seeds)
    # binary search over 1..1000 needs at most 10 guesses
    assert all(int(re.search(r"in (\d+) guesses", line).group(1)) <= 10 for line in seeds)


def test_tutorial_python_blocks_are_pieces_of_the_example() -> None:
    doc = (ROOT / "docs" / "envs.md").read_text()
    example = (ROOT / "examples" / "custom_env.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 6
    for block in blocks:
        assert block in example, f"docs/envs.md block not found verbatim in the example:\n{block[:200]}"


def test_tutorial_error_table_matches_what_the_env_says() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from custom_env import GuessNumber
    finally:
        sys.path.remove(str(ROOT / "examples"))
    doc = (ROOT / "docs" / "envs.md").read_text()
    env = GuessNumber()
    env.reset(seed=3)
    for action in (
        "<tool_call>{name: guess}</tool_call>",
        '<tool_call>{"name": "gues"}</tool_call>',
        '<tool_call>{"name": "guess", "arguments": {"number": "fifty"}}</tool_call>',
        '<tool_call>{"name": "guess", "arguments": {"number": 500}}</tool_call>',
    ):
        result = env.step(action)
        (message,) = result.observation
        assert message.content.startswith("Error:") and f"`{message.content}`" in doc
        assert result.info["tool_errors"] == 1 and not result.terminated
