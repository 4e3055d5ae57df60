"""Metrics: metrics.jsonl lines, resume truncation, TensorBoard events, the progress line, the mapping of the
runner's metrics, the phase timer, and the glossary covering every key."""

import io
import json
import math
import sys
from pathlib import Path

import pytest

from agentrl import metrics as M
from agentrl.metrics import (
    ALL_KEYS,
    MetricsLogger,
    PhaseTimer,
    peak_memory_mb,
    progress_line,
    read_metrics,
    rollout_metrics,
)
from agentrl.run_result import TRUNCATION_REASONS, Failure, Task, run_metrics
from agentrl.types import Episode, SubTrace

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _logger(run_dir: Path, **kwargs) -> MetricsLogger:
    return MetricsLogger(run_dir, tensorboard=kwargs.pop("tensorboard", False),
                         progress=kwargs.pop("progress", False), **kwargs)


def test_log_appends_one_flushed_json_line_per_iteration(tmp_path):
    logger = _logger(tmp_path)
    logger.log(1, {"rollout/reward_mean": 0.5, "skipped_updates": 2, "policy/loss": float("nan")})
    # flushed: readable before close
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "iteration": 1, "rollout/reward_mean": 0.5, "skipped_updates": 2.0, "policy/loss": None}
    logger.log(2, {"policy/loss": float("inf"), "critic/loss": 0.25})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == '{"iteration": 2, "policy/loss": null, "critic/loss": 0.25}'
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    assert isinstance(read_metrics(tmp_path)[0]["skipped_updates"], float)


def test_log_refuses_bad_values(tmp_path):
    with _logger(tmp_path) as logger:
        with pytest.raises(ValueError, match="'iteration' is the record's own key"):
            logger.log(1, {"iteration": 3})
        with pytest.raises(TypeError, match=r"metrics\['x'\]: expected a number, got str"):
            logger.log(1, {"x": "high"})


def test_tensor_and_numpy_scalars_are_taken(tmp_path):
    import numpy as np
    import torch

    with _logger(tmp_path) as logger:
        logger.log(1, {"a": torch.tensor(0.5), "b": np.float32(0.25), "c": True})
    assert read_metrics(tmp_path) == [{"iteration": 1, "a": 0.5, "b": 0.25, "c": 1.0}]


def test_new_run_refuses_existing_metrics_and_resume_truncates(tmp_path):
    with _logger(tmp_path) as logger:
        for i in range(1, 6):
            logger.log(i, {"policy/loss": float(i)})
    with pytest.raises(FileExistsError, match="already has metrics"):
        _logger(tmp_path)
    with _logger(tmp_path, resume_from_iteration=3) as logger:
        assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3]
        logger.log(4, {"policy/loss": 40.0})
    assert [r["policy/loss"] for r in read_metrics(tmp_path)] == [1.0, 2.0, 3.0, 40.0]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_read_metrics_skips_a_cut_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "a": 1.0}\n{"iteration": 2, "a"')
    assert read_metrics(tmp_path) == [{"iteration": 1, "a": 1.0}]
    with _logger(tmp_path, resume_from_iteration=5):  # a resume drops the cut line as well
        pass
    assert path.read_text() == '{"iteration": 1, "a": 1.0}\n'
    path.write_text('{"iteration": 1\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1: not a JSON record"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "nowhere") == []


def _scalars(log_dir: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def test_tensorboard_events_and_purge_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    with _logger(tmp_path, tensorboard=True) as logger:
        for i in (1, 2, 3):
            logger.log(i, {"policy/loss": float(i)})
    log_dir = tmp_path / M.TENSORBOARD_DIR
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert _scalars(log_dir, "policy/loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    with _logger(tmp_path, tensorboard=True, resume_from_iteration=1) as logger:
        logger.log(2, {"policy/loss": 20.0})
    assert _scalars(log_dir, "policy/loss") == [(1, 1.0), (2, 20.0)]


def test_purge_on_resume_holds_when_the_writer_counter_gains_a_digit(tmp_path):
    """Event files sort by name; in one second, a process's writer 10 would sort before its writer 9."""
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import event_file_writer

    counter = event_file_writer._global_uid  # the next writer's number: move it (forward) to 9, 99, ...
    counter._value = 10 ** len(str(counter._value)) - 1
    run = tmp_path / "run"
    with _logger(run, tensorboard=True) as logger:
        logger.log(1, {"policy/loss": 1.0})
        logger.log(2, {"policy/loss": 2.0})
    with _logger(run, tensorboard=True, resume_from_iteration=1) as logger:
        logger.log(2, {"policy/loss": 20.0})
    assert _scalars(run / M.TENSORBOARD_DIR, "policy/loss") == [(1, 1.0), (2, 20.0)]


def test_without_tensorboard_warns_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    monkeypatch.setattr(M, "_TB_WARNED", False)
    with pytest.warns(UserWarning, match="TensorBoard logging is off"):
        logger = _logger(tmp_path / "a", tensorboard=True)
    logger.log(1, {"a": 1.0})
    logger.close()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _logger(tmp_path / "b", tensorboard=True).close()
    assert read_metrics(tmp_path / "a") == [{"iteration": 1, "a": 1.0}]
    assert not (tmp_path / "a" / M.TENSORBOARD_DIR).exists()


def test_progress_line_format():
    metrics = {"rollout/reward_mean": 0.4213, "rollout/success_rate": 0.5, "policy/loss": -0.012345,
               "policy/approx_kl": 0.0011, "critic/loss": 0.31, "perf/tokens_per_s": 1834.4, "other": 1.0}
    assert progress_line(5, 10, metrics, width=10, eta_s=65) == (
        "[#####-----] 5/10 reward=0.421 success=0.50 policy_loss=-0.0123 kl_old=0.0011 critic_loss=0.31 "
        "tok/s=1834 eta=1m05s"
    )
    assert progress_line(3, None, {}) == "iter 3"
    assert progress_line(10, 10, {"rollout/reward_mean": float("nan")}, width=4) == "[####] 10/10 reward=nan"
    assert progress_line(1, 3, {}, width=6, eta_s=7200) == "[##----] 1/3 eta=2h00m00s"


def test_progress_line_names_the_run_follows_the_budget_and_says_undefined():
    metrics = {"rollout/env_steps": 300.0, "critic/explained_variance": float("nan")}
    # iteration 1 of 10, but 300 of the 400 budgeted steps: the bar is 3/4 full
    assert progress_line(1, 10, metrics, width=8, label="ppo_seed_0", max_env_steps=400) == (
        "ppo_seed_0 [######--] 1/10 steps=300/400 ev=undefined"
    )
    assert progress_line(2, 4, {"critic/explained_variance": -0.5}, width=4) == "[##--] 2/4 ev=-0.50"


def test_logger_eta_follows_the_step_budget(tmp_path, monkeypatch):
    clock = iter([0.0, 10.0, 20.0])  # start, then 10 s per iteration
    monkeypatch.setattr(M.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    with _logger(tmp_path, progress=True, total_iterations=100, stream=stream, max_env_steps=40) as logger:
        logger.log(1, {"rollout/env_steps": 10.0})  # 10 s for 10 steps: 30 steps left -> 30 s, not 99 x 10 s
        logger.log(2, {"rollout/env_steps": 20.0}, note="critic pre-training")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("steps=10/40 eta=30s")
    assert lines[1].endswith("steps=20/40 eta=20s (critic pre-training)")


def test_logger_prints_the_progress_line(tmp_path):
    stream = io.StringIO()
    with _logger(tmp_path, progress=True, total_iterations=4, stream=stream) as logger:
        logger.log(1, {"rollout/reward_mean": 1.0})
        logger.log(2, {"rollout/reward_mean": 2.0})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[#####---------------] 1/4 reward=1 eta=")
    assert lines[1].startswith("[##########----------] 2/4 reward=2 eta=")


# ----------------------------------------------------------------------------------------------------
# rollout_metrics on synthetic episodes.


def _sub_trace(reward: float) -> SubTrace:
    # prompt, two policy tokens (the reward on the last), a template token: 4 tokens, 2 policy tokens
    return SubTrace(token_ids=(1, 2, 3, 4), loss_mask=(0, 1, 1, 0), logprobs=(None, -0.5, -0.1, None),
                    rewards=(0.0, 0.0, reward, 0.0))


def _episodes() -> list[Episode]:
    return [
        Episode((_sub_trace(1.0),), "t0", "g0", "terminated", num_turns=2, info={"success": True}),
        Episode((_sub_trace(0.0), _sub_trace(0.0), _sub_trace(0.0)), "t1", "g1", "truncated",
                truncation_reason="max_compactions", num_turns=7, num_tool_errors=3,
                info={"cut_responses": 2}),
        Episode((_sub_trace(0.5), _sub_trace(0.0)), "t2", "g2", "truncated", truncation_reason="max_turns",
                num_turns=3, num_tool_errors=1, info={"success": False, "cut_summaries": 1}),
    ]


def test_rollout_metrics_maps_the_runners_metrics():
    episodes = _episodes()
    failure = Failure(Task(seed=9, group_id="g9"), "reset raised", env_broken=True)
    out = rollout_metrics(run_metrics(episodes, [failure], sampled_tokens=40, seconds=4.0), episodes)
    # rewards 1, 0, 0.5: mean 0.5, population std sqrt((0.25 + 0.25 + 0) / 3) = sqrt(1/6)
    expected = {
        M.ROLLOUT_EPISODES: 3.0, M.ROLLOUT_FAILED_TASKS: 1.0, M.ROLLOUT_SUCCESS_RATE: 1 / 3,
        M.ROLLOUT_REWARD_MEAN: 0.5, M.ROLLOUT_REWARD_STD: math.sqrt(1 / 6),
        M.ROLLOUT_TURNS_MEAN: 4.0,  # (2 + 7 + 3) / 3
        M.ROLLOUT_SUB_TRACES_MEAN: 2.0,  # (1 + 3 + 2) / 3
        M.ROLLOUT_COMPACTIONS_MEAN: 1.0,  # (0 + 2 + 1) / 3
        M.ROLLOUT_TOOL_ERRORS_MEAN: 4 / 3, M.ROLLOUT_TOOL_ERRORS: 4.0,
        M.ROLLOUT_CUT_RESPONSES: 2.0, M.ROLLOUT_CUT_SUMMARIES: 1.0, M.ROLLOUT_TERMINATED: 1.0,
        M.ROLLOUT_TOKENS: 24.0,  # 6 sub-traces x 4 tokens
        M.ROLLOUT_POLICY_TOKENS: 12.0,  # 6 sub-traces x 2 policy tokens
        M.PERF_TOKENS_PER_S: 10.0,  # 40 tokens / 4 s
        **{M.ROLLOUT_TRUNCATED[r]: 0.0 for r in TRUNCATION_REASONS},
        M.ROLLOUT_TRUNCATED["max_turns"]: 1.0, M.ROLLOUT_TRUNCATED["max_compactions"]: 1.0,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
    terminated_and_cut = out[M.ROLLOUT_TERMINATED] + sum(out[k] for k in M.ROLLOUT_TRUNCATED.values())
    assert terminated_and_cut == out[M.ROLLOUT_EPISODES]


def test_every_runner_metric_has_a_documented_name():
    """A key added to agentrl.runner.run_metrics must get a constant here (and a glossary entry)."""
    raw = run_metrics(_episodes(), [], sampled_tokens=1, seconds=1.0)
    unnamed = [k for k in raw if k not in M._RUN_METRICS_KEYS and k not in M.RUN_METRICS_IGNORED
               and f"rollout/{k}" not in ALL_KEYS]
    assert unnamed == []
    assert set(rollout_metrics(raw, _episodes())) <= set(ALL_KEYS)


def test_rollout_metrics_with_no_episodes_are_zero():
    out = rollout_metrics(run_metrics([], [], sampled_tokens=0, seconds=0.0), [])
    assert out[M.ROLLOUT_SUB_TRACES_MEAN] == 0.0 and out[M.ROLLOUT_REWARD_STD] == 0.0
    assert all(math.isfinite(v) for v in out.values())


# ----------------------------------------------------------------------------------------------------
# Timing, memory, and the glossary.


def test_phase_timer_adds_up_each_phase(monkeypatch):
    clock = iter([0.0, 1.5, 10.0, 10.25, 20.0, 22.0])
    monkeypatch.setattr(M.time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer()
    with timer.phase("rollout"):
        pass
    with timer.phase("policy"):
        pass
    with pytest.raises(RuntimeError), timer.phase("rollout"):  # a phase that raises is still timed
        raise RuntimeError
    assert timer.metrics() == {"perf/seconds_rollout": 3.5, "perf/seconds_policy": 0.25}
    assert set(timer.metrics()) <= set(ALL_KEYS)
    timer.reset()
    assert timer.metrics() == {}


def test_peak_memory_is_positive_on_the_cpu():
    assert 1.0 < peak_memory_mb("cpu") < 1e6


def test_all_keys_are_unique_and_every_constant_is_listed():
    assert len(set(ALL_KEYS)) == len(ALL_KEYS)
    constants = set()
    for name, value in vars(M).items():
        if name.isupper() and isinstance(value, str) and "/" in value:
            constants.add(value)
        elif name.isupper() and isinstance(value, dict):
            constants.update(v for v in value.values() if isinstance(v, str) and "/" in v)
    constants.add(M.SKIPPED_UPDATES)
    assert constants == set(ALL_KEYS)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_is_in_the_glossary(key):
    assert f"| `{key}` |" in DOCS.read_text(), f"docs/metrics.md has no row for {key}"
