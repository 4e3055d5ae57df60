"""First contact through the real CLI: ``--help`` shows defaults and explains every option, commands say
what they do while they do it, checkpoints are retained by the run's settings, and numbers that hide a
reason name it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agentrl.checkpoint import list_checkpoints
from agentrl.cli import build_parser, main
from agentrl.metrics import read_metrics
from agentrl.models import build_corpus, load_model

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_BARS = ("Loading weights", "Writing model shards")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ux") / "model"
    assert main(["init-model", "--out", str(out)]) == 0
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help_and_shows_its_default() -> None:
    for name, sub in _subparsers(build_parser()).items():
        assert sub.description, f"agentrl {name} --help has no description"
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"agentrl {name} {action.option_strings}: no help"
            shown = action.default not in (None, False, []) and action.option_strings
            if shown:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
    ev = " ".join(_subparsers(build_parser())["eval"].format_help().split())
    for flag in ("--max-response-tokens", "--context-budget", "--max-turns", "--seed",
                 "--max-summary-tokens"):
        assert flag in ev
    assert "(default: 128)" in ev and "(default: 1024)" in ev


def test_init_model_says_why_the_vocabulary_is_smaller_and_draws_no_library_bars(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-model", "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    info = json.loads((tmp_path / "m" / "agentrl_model.json").read_text())
    assert info["vocab_size"] < 2048
    assert f"vocabulary {info['vocab_size']} of at most 2048: the corpus ran out of merges" in captured.out
    assert not any(bar in captured.err + captured.out for bar in LIBRARY_BARS)


def test_init_model_adds_the_users_environment_to_the_tokenizer_corpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    env = "custom_env:GuessNumber"
    assert main(["init-model", "--out", str(tmp_path / "own"), "--env", env,
                 "--env-option", "max_number=1000"]) == 0
    assert main(["init-model", "--out", str(tmp_path / "default")]) == 0
    text = "".join(build_corpus([env], options={env: {"max_number": 1000}}, seeds=(7,)))
    own = len(load_model(tmp_path / "own")[1](text)["input_ids"])
    default = len(load_model(tmp_path / "default")[1](text)["input_ids"])
    assert own < 0.9 * default, (own, default)  # the task text takes fewer tokens (749 against 912)
    capsys.readouterr()
    assert main(["init-model", "--out", str(tmp_path / "bad"), "--env", env, "--env-option", "size=3"]) == 2
    assert "takes no option 'size'" in capsys.readouterr().err


def _train(run: Path, *extra: str, quiet: bool = False) -> int:
    args = ["train", "--config", str(ROOT / "examples" / "ppo_arithmetic.yaml"), "--run-dir", str(run),
            *(["--quiet"] if quiet else []),
            "--set", "rollout.tasks_per_iteration=4", "--set", "rollout.max_concurrent=8",
            "--set", "optim.micro_batch_tokens=256"]
    for item in extra:
        args += ["--set", item]
    return main(args)


def test_train_says_its_plan_labels_pre_training_and_follows_the_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "run", "run.iterations=50", "run.max_env_steps=8") == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == ("ppo_arithmetic: PPO, 1 critic-only iteration (ppo.value_pretrain_steps), then 50 "
                        "policy iterations (run.iterations) or 8 environment steps (run.max_env_steps), "
                        f"whichever comes first; writing {tmp_path / 'run'}")
    progress = [line for line in lines if line.startswith("ppo_arithmetic [")]
    assert len(progress) == len(read_metrics(tmp_path / "run")) == 2  # 4 one-step episodes an iteration
    assert progress[0].endswith("(critic pre-training)") and "steps=4/8" in progress[0]
    assert "steps=8/8" in progress[1] and progress[1].split()[1] == "[####################]"
    assert "kl_old=" in progress[1] and " kl=" not in progress[1]
    assert not any(bar in err for bar in LIBRARY_BARS)


def test_train_keeps_the_newest_checkpoints_and_the_best_by_the_named_metric(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, "run.iterations=4", "run.checkpoint_every=1", "run.keep_checkpoints=2",
                  "run.keep_best=rollout/tokens", "run.best_mode=min", quiet=True) == 0
    records = read_metrics(run)
    assert len(records) == 5
    best = min(records, key=lambda r: (r["rollout/tokens"], -r["iteration"]))["iteration"]
    kept = [int(p.name.split("_")[1]) for p in list_checkpoints(run)]
    assert kept == sorted({4, 5, best})


def test_the_no_room_error_names_the_summary_reserve(
        model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["eval", "--env", "arithmetic", "--model", str(model_dir), "--episodes", "1",
          "--max-response-tokens", "8", "--context-budget", "256", "--max-summary-tokens", "200",
          "--out", str(tmp_path / "e.jsonl")])
    err = capsys.readouterr().err
    assert "leaves no room for a response of 8 in context_budget=256 with" in err
    assert "kept for the summary turn" in err
