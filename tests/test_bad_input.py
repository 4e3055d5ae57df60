"""Bad input through the CLI (issue 19, items 14 and 18): environments that cannot start, a package that
is missing, and where eval writes; each a clear line and a non-zero exit, nothing lost."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.env import ToolEnv
from agentrl.failures import NoEpisodesError, check_not_empty, common_reasons, save_failures
from agentrl.metrics import read_metrics
from agentrl.runner import Failure, Task

ROOT = Path(__file__).resolve().parent.parent


class NeverStarts(ToolEnv):
    """Every reset raises."""

    name = "never_starts"
    system_prompt = "Nothing."

    def setup(self, rng: random.Random, options: dict) -> str:
        raise RuntimeError("the task server is down")


class CannotBuild(ToolEnv):
    """The constructor raises something other than a ValueError."""

    name = "cannot_build"

    def __init__(self) -> None:
        raise RuntimeError("no licence")


def eval_args(model: Path, env: str, *extra: str) -> list[str]:
    return ["eval", "--env", env, "--model", str(model), "--episodes", "2", "--max-turns", "2", *extra]


def test_eval_exits_non_zero_when_every_task_failed(tiny_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Before: exit 0, with "wrote 0 episodes".
    out = tmp_path / "e.jsonl"
    assert main(eval_args(tiny_model_dir, "test_bad_input:NeverStarts", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "every task failed to start (2)" in err
    assert "reset raised RuntimeError: the task server is down" in err
    assert out.exists() and out.read_text() == ""  # what there was (nothing) is still written


def test_eval_turns_a_constructor_error_into_one_line(tiny_model_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Before: a RuntimeError from the constructor printed a traceback.
    args = eval_args(tiny_model_dir, "test_bad_input:CannotBuild", "--out", str(tmp_path / "e.jsonl"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "--env: building 'test_bad_input:CannotBuild' raised RuntimeError: no licence" in err


def test_eval_without_out_writes_under_runs_not_the_current_directory(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(eval_args(tiny_model_dir, "arithmetic")) == 0
    assert not (tmp_path / "episodes.jsonl").exists()
    written = tmp_path / "runs" / "eval_arithmetic" / "episodes.jsonl"
    assert len(written.read_text().splitlines()) == 2


def test_a_missing_gymnasium_is_one_line_with_an_install_that_works(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a 29-line traceback suggesting `pip install agentrl[gym]`, which is not a published package.
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now raises ImportError
    assert main(eval_args(tiny_model_dir, "gym", "--out", str(tmp_path / "e.jsonl"))) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "pip install 'gymnasium>=1.0'" in err and "agentrl[gym]" not in err


def test_train_stops_after_max_empty_iterations_and_records_why(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Before: thousands of empty iterations, then exit 0 with no episode and the reasons nowhere.
    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "examples" / "grpo_arithmetic.yaml"), "--run-dir", str(run),
            "--quiet", "--iterations", "50"]
    for item in ["env.name=test_bad_input:NeverStarts", "env.options={}", "rollout.tasks_per_iteration=2",
                 "rollout.group_size=2", "rollout.max_empty_iterations=2"]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rollout.max_empty_iterations: every task failed in 2 iterations in a row" in err
    assert "4 x reset raised RuntimeError: the task server is down" in err
    for iteration in (1, 2):
        rows = (run / "failures" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()
        records = [json.loads(r) for r in rows]
        assert len(records) == 4 and all("task server is down" in r["error"] for r in records)
    assert not (run / "failures" / "iter_000003.jsonl").exists()
    assert [r["rollout/failed_tasks"] for r in read_metrics(run)] == [4.0]


def test_an_empty_iteration_between_full_ones_does_not_stop_a_run() -> None:
    failures = [Failure(Task(s, f"g{s}"), "reset raised RuntimeError: x" if s else "prompt too long")
                for s in range(3)]
    check_not_empty(1, 2, failures, Path("f"))  # one empty iteration goes by
    with pytest.raises(NoEpisodesError, match=r"2 x reset raised RuntimeError: x; 1 x prompt too long"):
        check_not_empty(2, 2, failures, Path("f"))
    many = [Failure(Task(s, "g"), f"reason {s}") for s in range(5)]
    assert common_reasons(many).endswith("; and 2 other reasons")


def test_failures_are_written_one_a_line(tmp_path: Path) -> None:
    failures = [Failure(Task(3, "g3", {"size": "small"}), "reset raised \ud800", env_broken=True)]
    path = tmp_path / "f" / "iter_000001.jsonl"
    assert save_failures(path, failures) == 1
    record = json.loads(path.read_text())
    assert record == {"seed": 3, "group_id": "g3", "options": {"size": "small"},
                      "error": "reset raised \ufffd", "env_broken": True}


def test_an_interrupted_run_says_what_it_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import agentrl.train as train_module

    real, calls = train_module.run_iteration, []

    def ctrl_c_in_iteration_3(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_iteration", ctrl_c_in_iteration_3)
    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "examples" / "grpo_arithmetic.yaml"), "--run-dir", str(run),
            "--quiet", "--iterations", "4", "--set", "run.checkpoint_every=1",
            "--set", "rollout.tasks_per_iteration=2", "--set", "rollout.group_size=2"]
    with pytest.raises(KeyboardInterrupt):
        main(args)
    err = capsys.readouterr().err
    kept = "interrupted in iteration 3: the last checkpoint is iter_000002"
    assert f"{kept}; agentrl train --resume {run}" in err
