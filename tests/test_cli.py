"""The ``agentrl`` command line: ``agentrl envs`` in process and as the installed console script."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.registry import list_envs

BUILTIN = {"graph_nav", "ledger", "arithmetic", "gym", "code_fix"}


def check_listing(out: str) -> None:
    """One ``name  description`` line per registered env, names sorted, descriptions in one column."""
    lines = out.splitlines()
    expected = list_envs()
    assert len(lines) == len(expected)
    width = max(len(name) for name, _ in expected)
    for line, (name, description) in zip(lines, expected, strict=True):
        assert re.fullmatch(r"[a-z][a-z0-9_]* +\S.*", line), line
        assert line == f"{name.ljust(width)}  {description}"
        assert line.split()[0] == name
    assert BUILTIN <= {line.split()[0] for line in lines}


def test_envs_prints_one_line_per_env(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    check_listing(captured.out)
    assert any(line.startswith("graph_nav  ") for line in captured.out.splitlines())  # the widest name


def test_a_usage_error_exits_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["no_such_command"]):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
    assert "usage: agentrl" in capsys.readouterr().err


def test_the_console_script_lists_the_envs() -> None:
    script = Path(sys.executable).with_name("agentrl")
    command = str(script) if script.exists() else shutil.which("agentrl")
    assert command, "the agentrl console script is not installed"
    out = subprocess.run([command, "envs"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    check_listing(out.stdout)
