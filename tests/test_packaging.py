"""The package outside the repository: a wheel holds the built-in environments as ``agentrl.envs`` and
the example configs as ``agentrl.examples`` (no top-level ``envs`` to clash with another package), and
the installed package finds them from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel needs setuptools >= 77 "
                        "(the dev extra installs it)")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("agentrl-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_envs_and_configs_inside_agentrl(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {"agentrl/envs/__init__.py", "agentrl/envs/graph_nav.py", "agentrl/envs/gym_adapter.py",
            "agentrl/examples/ppo_arithmetic.yaml", "agentrl/examples/grpo_graph_nav.yaml",
            "agentrl/viewer/static/viewer.html"} <= names
    top_level = {n.split("/")[0] for n in names if not n.startswith("agentrl-")}
    assert top_level == {"agentrl"}, top_level  # no top-level envs (or examples) package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "builtin = agentrl.envs:register_builtin" in wheel.read(entry_points).decode()


def test_outside_a_clone_the_envs_and_configs_are_found(tmp_path: Path) -> None:
    code = ("from agentrl.registry import make; from agentrl.compare import config_path; "
            "print(type(make('graph_nav', size='small')).__module__); "
            "print(config_path(None, 'ppo', 'ledger'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    module, config = out.stdout.split()
    assert module == "agentrl.envs.graph_nav"
    assert Path(config).name == "ppo_ledger.yaml" and Path(config).is_file()
