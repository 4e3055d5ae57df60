"""``agentrl train`` with 2 Ray rollout workers and 2 learner ranks: it trains, is killed (SIGKILL, the
whole process group) after its second checkpoint, resumes, and its metrics match an uninterrupted run
of the same shards in one process with one rank (the episodes are the shards', whatever plays them;
2 ranks update as 1 within float rounding)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from agentrl.cli import main  # noqa: E402
from agentrl.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["rollout.tasks_per_iteration=4", "rollout.max_concurrent=8", "optim.micro_batch_tokens=256",
            "run.checkpoint_every=1", "distributed.rollout_shards=2", "distributed.worker_cpus=0.5"]
SCALED = ["distributed.rollout_workers=2", "distributed.learner_ranks=2"]


def args(run_dir: Path, *extra: str) -> list[str]:
    out = ["train", "--config", str(ROOT / "examples" / "ppo_arithmetic.yaml"), "--run-dir", str(run_dir),
           "--quiet", "--iterations", "3"]
    for item in [*SETTINGS, *extra]:
        out += ["--set", item]
    return out


# critic/clip_frac counts tokens where the clipped value term is the larger; at the first critic pass
# V equals old V and the two terms tie, so float rounding of a different batch layout decides it (the
# parameters still agree within 1e-5: tests/test_data_parallel.py)
TIES = ("critic/clip_frac",)
# logged by Ray workers only (the one-process run has none to lose); each scaled record must say 0
PLACEMENT = ("rollout/lost_workers",)


def learned(records: list[dict]) -> list[dict]:
    """What the run computed, without wall-clock timings and tie counts."""
    assert all(r.get(key, 0.0) == 0.0 for r in records for key in PLACEMENT)  # no worker lost
    skip = TIES + PLACEMENT
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and "seconds" not in k and k not in skip}
            for r in records]


def kill_after_checkpoint(cmd: list[str], checkpoint: Path, timeout: float = 300) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not (checkpoint / "trainer_state.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its ranks and the Ray processes they started
        proc.wait()


def _close(mine: float | None, theirs: float | None) -> bool:
    """Equal to 1e-4, or both undefined (None: e.g. explained variance with returns of no variance)."""
    if theirs is None or mine is None:
        return mine is theirs
    return mine == pytest.approx(theirs, rel=1e-4, abs=1e-6)


def test_two_workers_two_ranks_killed_and_resumed_match_one_process(tmp_path: Path) -> None:
    assert main(args(tmp_path / "one")) == 0
    expected = learned(read_metrics(tmp_path / "one"))
    scaled = tmp_path / "scaled"
    cli = [sys.executable, "-m", "agentrl.cli", *args(scaled, *SCALED)]
    kill_after_checkpoint(cli, scaled / "checkpoints" / "iter_000002")
    assert len(read_metrics(scaled)) < len(expected)  # killed before the end
    assert main(["train", "--resume", str(scaled), "--quiet"]) == 0
    got = learned(read_metrics(scaled))
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert _close(mine[key], value), (mine["iteration"], key)


def test_compare_runs_its_arms_on_two_learner_ranks(tmp_path: Path) -> None:
    """``agentrl compare`` takes the section as ``train`` does: an arm on 2 ranks learns what 1 rank does."""
    from agentrl.config import load_config

    def compare(out: Path, *extra: str) -> list[dict]:
        sets = ["rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_concurrent=8",
                "optim.micro_batch_tokens=256", "run.checkpoint_every=0", "distributed.rollout_shards=2",
                *extra]
        # PPO: at the start GRPO's arithmetic rewards are all 0, its gradient is float noise (which
        # Adam's first step blows up to full size), and no two layouts of the sums agree on noise
        argv = ["compare", "--env", "arithmetic", "--algos", "ppo", "--seeds", "1", "--budget", "16",
                "--config-dir", str(ROOT / "examples"), "--eval-episodes", "4", "--out", str(out), "--quiet"]
        assert main(argv + [x for s in sets for x in ("--set", s)]) == 0
        (run,) = [p.parent for p in out.rglob("metrics.jsonl")]
        assert load_config(run / "config.yaml").distributed.learner_ranks == (2 if extra else 1)
        return learned(read_metrics(run))

    two, one = compare(tmp_path / "two", "distributed.learner_ranks=2"), compare(tmp_path / "one")
    assert len(two) == len(one) >= 2
    for mine, theirs in zip(two, one, strict=True):
        for key, value in theirs.items():
            assert _close(mine[key], value), key


def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path: Path) -> None:
    """Rank 0's checkpoint is the whole state: stopped after 2 iterations on 2 ranks, resumed on 1, the
    run learns what a 1-rank run does."""
    assert main(args(tmp_path / "one")) == 0
    expected = learned(read_metrics(tmp_path / "one"))
    two = tmp_path / "two"
    first = args(two, "distributed.learner_ranks=2")
    first[first.index("--iterations") + 1] = "1"  # 1 + the critic's pre-training iteration = 2
    assert main(first) == 0
    assert len(read_metrics(two)) == 2
    assert main(["train", "--resume", str(two), "--quiet", "--iterations", "3",
                 "--set", "distributed.learner_ranks=1"]) == 0
    got = learned(read_metrics(two))
    assert len(got) == len(expected) == 4
    for mine, theirs in zip(got, expected, strict=True):
        for key, value in theirs.items():
            assert _close(mine[key], value), (mine["iteration"], key)


def test_a_run_refused_before_the_ranks_start_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(args(run)) == 0
    capsys.readouterr()
    assert main(args(run, "distributed.learner_ranks=2")) == 2  # a fresh start on a directory with a run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agentrl train: error: run_dir:") and "already holds" in err[0]


def test_a_rank_error_comes_back_as_its_one_line() -> None:
    from torch.multiprocessing import ProcessRaisedException

    from agentrl.data_parallel import _expected

    raised = ProcessRaisedException("\n\n-- Process 0 terminated with the following error:\nTraceback (most "
                                    "recent call last):\n  File \"x\"\nValueError: run_dir: in use", 0, 1)
    assert str(_expected(raised)) == "run_dir: in use"
    assert _expected(ProcessRaisedException("Traceback\nRuntimeError: boom", 0, 1)) is None
