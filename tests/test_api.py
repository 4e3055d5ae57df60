"""The Python API (``agentrl.load_config``, ``train``, ``evaluate``, ``compare``): docs/api.md's example
runs as written, the names keep their meaning whichever module was imported first, and ``import
agentrl`` loads no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"runs/api_example: held-out success \d\.\d\d on 8 tasks", out[0]), out
    assert out[1].startswith("**ppo against grpo**:"), out
    assert (tmp_path / "runs" / "api_compare" / "report.md").is_file()


def test_the_names_mean_the_api_whichever_module_came_first() -> None:
    code = (
        "import sys, agentrl\n"
        "assert 'torch' not in sys.modules\n"
        "cfg = agentrl.load_config(None, ['run.iterations=3'])\n"
        "assert cfg.run.iterations == 3 and 'torch' not in sys.modules\n"
        "import agentrl.train, agentrl.compare\n"  # binds the modules on the package
        "from agentrl import train, compare, evaluate\n"
        "assert callable(train) and callable(compare) and train is agentrl.train\n"
        "assert callable(agentrl.train.build) and callable(agentrl.compare.plan)\n"
        "try:\n"
        "    agentrl.evaluate('no_such_run_dir')\n"
        "except ValueError as e:\n"
        "    assert 'holds no run' in str(e)\n"
        "try:\n"
        "    agentrl.train(cfg, overrides=['run.seed=1'])\n"
        "except ValueError as e:\n"
        "    assert str(e).startswith('overrides:')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
