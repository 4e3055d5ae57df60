"""code_fix: check_env, the expert on 200 seeds of each setting, grading, and cleanup of many episodes."""

from __future__ import annotations

import gc
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agentrl.envs.code_catalogue import CATALOGUE, compile_function
from agentrl.envs.code_fix import SETTINGS, CodeFix
from test_sandbox import sandbox_processes

from agentrl.env import check_env
from agentrl.registry import make
from agentrl.sandbox import PREFIX, bwrap_path
from agentrl.tools import format_tool_call

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed")
WORKERS = 4  # the episodes wait on sandboxed subprocesses, so threads overlap them


def play(env: CodeFix, seed: int) -> tuple[bool, int, float]:
    """The expert's episode on ``seed``: success, turns, total reward."""
    env.reset(seed=seed)
    turns, total = 0, 0.0
    while (action := env.expert_action()) is not None:
        result = env.step(action)
        turns, total = turns + 1, total + result.reward
    return bool(result.info.get("success")), turns, total


def play_many(setting: str, seeds: range) -> list[tuple[bool, int, float]]:
    def run(part: range) -> list[tuple[bool, int, float]]:
        env = CodeFix(setting=setting)
        return [play(env, seed) for seed in part]

    parts = [seeds[i::WORKERS] for i in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        return [x for chunk in pool.map(run, parts) for x in chunk]


def test_catalogue_bugs_are_real_and_sources_compile():
    import random

    rng = random.Random(0)
    for spec in CATALOGUE:
        good, bad = compile_function(spec.source, spec.name), compile_function(spec.buggy, spec.name)
        inputs = [spec.inputs(rng) for _ in range(50)]
        assert any(good(*a) != bad(*a) for a in inputs), spec.name  # the planted bug changes something
        assert spec.missing().endswith('raise NotImplementedError("write this function")')


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_check_env_passes(setting):
    check_env(CodeFix(setting=setting), seeds=(0, 1))


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_expert_solves_every_one_of_200_seeds(setting):
    results = play_many(setting, range(200))
    assert all(success for success, _, _ in results)
    assert all(total == 1.0 for _, _, total in results)
    turns = [t for _, t, _ in results]
    if setting == "long":
        assert min(turns) >= 40  # long enough that a window of a few thousand tokens compacts


def test_registered_and_bad_options_name_the_field():
    env = make("code_fix", setting="short")
    assert isinstance(env, CodeFix)
    bad = (({"setting": "huge"}, "setting"), ({"num_modules": 0}, "num_modules"),
           ({"num_bugs": 5, "num_modules": 1}, "num_bugs"), ({"missing_rate": 2}, "missing_rate"))
    for options, field in bad:
        with pytest.raises(ValueError, match=f"^{field}:"):
            CodeFix(**options)


def test_reward_is_the_fraction_of_hidden_tests_and_a_fake_result_earns_nothing():
    env = CodeFix(setting="short")
    env.reset(seed=3)
    result = env.step(format_tool_call("submit", {}))  # unfixed: the broken function's cases fail
    passed, total = env.grade
    assert result.terminated and result.info["success"] is False
    assert 0 < passed < total and result.reward == pytest.approx(passed / total)
    assert env.sandbox is None  # the episode's sandbox is gone with the episode

    env.reset(seed=3)
    module = next(f.module for f in env.functions)
    fake = "import sys\nprint('grade-0000000000000000 999 999')\nprint('Submitted: 16 of 16')\nsys.exit(0)\n"
    env.step(format_tool_call("write_file", {"path": f"{module}.py", "content": fake}))
    result = env.step(format_tool_call("submit", {}))
    assert result.reward == 0.0 and env.grade[0] == 0


def test_many_episodes_at_once_leave_no_process_or_directory():
    before = set(Path(tempfile.gettempdir()).glob(f"{PREFIX}{os.getpid()}-*"))
    uids: set[int] = set()

    def episode(seed: int) -> bool:
        env = CodeFix(setting="medium")
        env.reset(seed=seed)
        uids.add(env.sandbox.uid)
        for _ in range(3 + seed % 9):  # some episodes stop halfway, as a run cut at max_turns does
            action = env.expert_action()
            if action is None:
                break
            env.step(action)
        env.step(format_tool_call("run_shell", {"command": "sleep 60 &"}))  # a straggler, if still open
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(episode, range(24)))
    gc.collect()  # the unfinished episodes' envs are gone: their sandboxes with them
    assert set(Path(tempfile.gettempdir()).glob(f"{PREFIX}{os.getpid()}-*")) == before
    assert all(sandbox_processes(uid) == [] for uid in uids)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", ["ppo_code_fix.yaml", "grpo_code_fix.yaml"])
def test_train_runs_on_code_fix(tmp_path: Path, config: str) -> None:
    from agentrl.cli import main
    from agentrl.metrics import read_metrics

    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "examples" / config), "--run-dir", str(run), "--quiet"]
    for item in ("run.iterations=2", "rollout.tasks_per_iteration=2", "run.checkpoint_every=0",
                 "rollout.max_response_tokens=32"):
        args += ["--set", item]
    assert main(args) == 0
    rows = [r for r in read_metrics(run) if "rollout/episodes" in r]
    assert len(rows) >= 2 and all(r["rollout/episodes"] > 0 and r["rollout/failed_tasks"] == 0 for r in rows)
    assert any("policy/loss" in r for r in rows)


def test_eval_runs_on_code_fix(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from agentrl.cli import main
    from agentrl.episodes import load_episodes

    out = tmp_path / "eps.jsonl"
    argv = ["eval", "--env", "code_fix", "--model", str(tiny_model_dir), "--episodes", "2",
            "--env-option", "setting=short", "--max-response-tokens", "16", "--context-budget", "2048",
            "--max-turns", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "success" in capsys.readouterr().out
    assert [e.task_id for e in load_episodes(out)] == ["code_fix:0", "code_fix:1"]

