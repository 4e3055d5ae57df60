"""The comparison report: a table and two plots made from finished runs' own files (``agentrl compare``).

Every number comes from a run directory's ``metrics.jsonl`` (one record per iteration, keys in
docs/metrics.md) and ``eval.json`` (the final policy on held-out tasks, written by ``agentrl.compare``);
nothing is carried over from the process that trained. So ``write_report`` can be rerun on the
directories alone, and a test can recompute every cell from the same files.

One run (``summarize_run``):

- **held-out success**: ``eval.json``'s ``success_rate``.
- **success AUC**: the training success curve integrated over environment steps and divided by the
  budget: iteration i contributes ``rollout/success_rate`` times its steps (the rise of the cumulative
  ``rollout/env_steps``), the last iteration's steps cut at the budget. With no budget, the run's own
  steps normalise. It is the mean training success over the budget's steps: 1 means every episode
  succeeded from the start.
- **env steps**: the last ``rollout/env_steps`` (the budget, or a little more: the last iteration ends
  whole). **iterations**: records in ``metrics.jsonl`` (PPO's critic pre-training included).
- **generated tokens**: the sum of ``rollout/policy_tokens`` (actions and summaries).
- **wall time**: the sum of every ``perf/seconds_*`` phase (rollout, advantages, critic, policy,
  checkpoint); start-up and evaluation are not in it.
- **learner s / iteration**: the mean over iterations of ``perf/seconds_advantages + perf/seconds_critic +
  perf/seconds_policy`` (absent phases count 0).
- **peak memory**: the largest ``perf/peak_memory_mb``.
- **sub-traces / episode**: ``rollout/sub_traces_mean`` averaged over every training episode (weighted by
  ``rollout/episodes``).

One arm (``summarize_arm``) over its seeds: the mean of each, the held-out success with a 95% confidence
interval from the t distribution (``mean +- t(0.975, n-1) * s / sqrt(n)``, s the sample standard
deviation; "n/a" with one seed), and the peak memory as the largest of the seeds'.

This module imports no torch; matplotlib (Agg backend) only inside ``plot_success``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.metrics import (
    PERF_PEAK_MEMORY_MB,
    PERF_SECONDS,
    ROLLOUT_ENV_STEPS,
    ROLLOUT_EPISODES,
    ROLLOUT_POLICY_TOKENS,
    ROLLOUT_SUB_TRACES_MEAN,
    ROLLOUT_SUCCESS_RATE,
    read_metrics,
)
from agentrl.significance import ALPHA, TEST_NAME, verdicts

EVAL_FILE = "eval.json"
REPORT_FILE = "report.md"
PLOT_ENV_STEPS = "success_vs_env_steps.png"
PLOT_WALL_TIME = "success_vs_wall_time.png"
LEARNER_PHASES = ("advantages", "critic", "policy")

# t(0.975, df) for df = 1..30; beyond, the Cornish-Fisher expansion in t_critical_95 (error < 1e-4).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def t_critical_95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"df: expected an int >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and the half-width of its 95% t interval (None with fewer than 2 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_critical_95(n - 1) * std / math.sqrt(n)


# ---- one run --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run's numbers, each from its ``metrics.jsonl`` or ``eval.json`` (module docstring)."""

    seed: int
    heldout_success: float
    heldout_reward: float
    heldout_episodes: int
    auc: float
    env_steps: float
    iterations: int
    generated_tokens: float
    wall_s: float
    learner_s_per_iteration: float
    peak_memory_mb: float
    sub_traces_per_episode: float


@dataclass(frozen=True)
class Curve:
    """One run's training curve: per iteration, the cumulative env steps and wall seconds, and success."""

    env_steps: np.ndarray  # (I,)
    wall_s: np.ndarray  # (I,)
    success: np.ndarray  # (I,)


def _get(record: Mapping[str, Any], key: str) -> float:
    """A metric of one record; absent or non-finite (``null``) counts as 0."""
    value = record.get(key)
    return 0.0 if value is None else float(value)


def success_auc(records: Sequence[Mapping[str, Any]], budget: int | None) -> float:
    """The training success curve's area over environment steps, divided by ``budget`` (None: by the
    run's own steps): iteration i weighs its success rate by its steps, cut at the budget."""
    area, before = 0.0, 0.0
    for record in records:
        total = _get(record, ROLLOUT_ENV_STEPS)
        steps = total - before if budget is None else max(0.0, min(total, budget) - before)
        area += _get(record, ROLLOUT_SUCCESS_RATE) * steps
        before = total if budget is None else min(total, budget)
    denominator = budget if budget is not None else before
    return area / denominator if denominator > 0 else 0.0


def read_eval(run_dir: Path) -> dict[str, Any]:
    """The run's ``eval.json``."""
    path = run_dir / EVAL_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing (the run was not evaluated)")
    return json.loads(path.read_text())


def summarize_run(run_dir: str | Path, seed: int, budget: int | None) -> RunSummary:
    """The numbers of the run in ``run_dir`` (module docstring), from its files alone."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: no metrics.jsonl records")
    ev = read_eval(run_dir)
    episodes = sum(_get(r, ROLLOUT_EPISODES) for r in records)
    sub_traces = sum(_get(r, ROLLOUT_SUB_TRACES_MEAN) * _get(r, ROLLOUT_EPISODES) for r in records)
    learner = [sum(_get(r, PERF_SECONDS[p]) for p in LEARNER_PHASES) for r in records]
    memory = [r[PERF_PEAK_MEMORY_MB] for r in records if r.get(PERF_PEAK_MEMORY_MB) is not None]
    return RunSummary(
        seed=seed,
        heldout_success=float(ev["success_rate"]),
        heldout_reward=float(ev["reward_mean"]),
        heldout_episodes=int(ev["episodes"]),
        auc=success_auc(records, budget),
        env_steps=_get(records[-1], ROLLOUT_ENV_STEPS),
        iterations=len(records),
        generated_tokens=sum(_get(r, ROLLOUT_POLICY_TOKENS) for r in records),
        wall_s=sum(_get(r, key) for r in records for key in PERF_SECONDS.values()),
        learner_s_per_iteration=sum(learner) / len(learner),
        peak_memory_mb=max(memory) if memory else math.nan,
        sub_traces_per_episode=sub_traces / episodes if episodes else 0.0,
    )


def read_curve(run_dir: str | Path) -> Curve:
    """The run's success per iteration against cumulative env steps and cumulative phase seconds."""
    records = read_metrics(run_dir)
    wall = np.cumsum([sum(_get(r, key) for key in PERF_SECONDS.values()) for r in records])
    return Curve(env_steps=np.array([_get(r, ROLLOUT_ENV_STEPS) for r in records]), wall_s=wall,
                 success=np.array([_get(r, ROLLOUT_SUCCESS_RATE) for r in records]))


# ---- one arm and the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds: means, the held-out success's 95% CI half-width, the largest peak."""

    name: str
    runs: int
    heldout_success: float
    heldout_ci95: float | None
    auc: float
    env_steps: float
    iterations: float
    generated_tokens: float
    wall_s: float
    learner_s_per_iteration: float
    peak_memory_mb: float
    sub_traces_per_episode: float


def summarize_arm(name: str, runs: Sequence[RunSummary]) -> ArmSummary:
    """The arm's row: the mean over ``runs`` of each number, the CI, the largest peak memory."""

    def mean(attr: str) -> float:
        return sum(getattr(r, attr) for r in runs) / len(runs)

    success, ci = mean_ci95([r.heldout_success for r in runs])
    memory = [r.peak_memory_mb for r in runs if math.isfinite(r.peak_memory_mb)]
    return ArmSummary(
        name=name, runs=len(runs), heldout_success=success, heldout_ci95=ci, auc=mean("auc"),
        env_steps=mean("env_steps"), iterations=mean("iterations"),
        generated_tokens=mean("generated_tokens"), wall_s=mean("wall_s"),
        learner_s_per_iteration=mean("learner_s_per_iteration"),
        peak_memory_mb=max(memory) if memory else math.nan,
        sub_traces_per_episode=mean("sub_traces_per_episode"),
    )


ARM_HEADER = ("arm", "runs", "held-out success (mean ± 95% CI)", "success AUC", "env steps", "iterations",
              "generated tokens", "wall time (s)", "learner s / iteration", "peak memory (MiB)",
              "sub-traces / episode")
RUN_HEADER = ("arm", "seed", "held-out success", "held-out reward", "success AUC", "env steps",
              "iterations", "generated tokens", "wall time (s)", "learner s / iteration",
              "peak memory (MiB)", "sub-traces / episode")


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _count(value: float) -> str:
    """A count (steps, iterations, tokens): an integer as an integer, a mean over seeds with one decimal."""
    if not math.isfinite(value):
        return "n/a"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def arm_row(a: ArmSummary) -> list[str]:
    """The cells of the arm table's row for ``a``."""
    ci = "n/a" if a.heldout_ci95 is None else _fmt(a.heldout_ci95, 3)
    return [a.name, str(a.runs), f"{_fmt(a.heldout_success, 3)} ± {ci}", _fmt(a.auc, 3),
            _count(a.env_steps), _count(a.iterations), _count(a.generated_tokens), _fmt(a.wall_s, 1),
            _fmt(a.learner_s_per_iteration, 3), _fmt(a.peak_memory_mb, 0),
            _fmt(a.sub_traces_per_episode, 2)]


def run_row(arm: str, r: RunSummary) -> list[str]:
    """The cells of the per-run table's row for ``r``."""
    return [arm, str(r.seed), _fmt(r.heldout_success, 3), _fmt(r.heldout_reward, 3), _fmt(r.auc, 3),
            _count(r.env_steps), str(r.iterations), _count(r.generated_tokens), _fmt(r.wall_s, 1),
            _fmt(r.learner_s_per_iteration, 3), _fmt(r.peak_memory_mb, 0),
            _fmt(r.sub_traces_per_episode, 2)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ---- plots ----------------------------------------------------------------------------------------------


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving mean over ``window`` points (fewer at the start)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.arange(1, len(y) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot_success(curves: Mapping[str, Sequence[Curve]], x: str, path: Path, *, title: str) -> Path:
    """Success against ``x`` (``env_steps`` or ``wall_s``), one line per arm (the mean over its seeds
    of the smoothed curves, interpolated onto a common grid) with a band from the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(len(c.success) for runs in curves.values() for c in runs)
    window = max(1, longest // 20)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for arm, runs in curves.items():
        xs = [getattr(c, x) for c in runs]
        lo, hi = max(v[0] for v in xs), min(v[-1] for v in xs)  # where every seed has data
        grid = np.linspace(lo, hi, 200) if hi > lo else np.array([hi])
        ys = np.stack([np.interp(grid, getattr(c, x), _smooth(c.success, window)) for c in runs])
        (line,) = ax.plot(grid, ys.mean(axis=0), label=f"{arm} ({len(runs)} seeds)",
                          marker="o" if len(grid) == 1 else None)
        ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("environment steps" if x == "env_steps" else "wall time (s, sum of training phases)")
    smoothing = f"\n(moving mean over {window} iterations)" if window > 1 else ""
    ax.set_ylabel("training success rate" + smoothing)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the report -----------------------------------------------------------------------------------------


def write_report(
    out: str | Path,
    runs: Mapping[str, Sequence[tuple[int, Path]]],
    *,
    budget: int | None,
    intro: str,
    commands: Sequence[str],
) -> Path:
    """Write ``out/report.md`` and its two plots for ``runs`` (arm -> [(seed, run directory)], in
    table order), every number read from the runs' files; ``intro`` opens the report and ``commands``
    reproduce it. Returns the report's path."""
    out = Path(out)
    summaries = {arm: [summarize_run(d, seed, budget) for seed, d in rs] for arm, rs in runs.items()}
    curves = {arm: [read_curve(d) for _, d in rs] for arm, rs in runs.items()}
    plot_success(curves, "env_steps", out / PLOT_ENV_STEPS, title="Success against environment steps")
    plot_success(curves, "wall_s", out / PLOT_WALL_TIME, title="Success against wall time")
    arm_rows = [arm_row(summarize_arm(arm, s)) for arm, s in summaries.items()]
    run_rows = [run_row(arm, r) for arm, s in summaries.items() for r in s]
    lines = verdicts({arm: [r.heldout_success for r in s] for arm, s in summaries.items()},
                     what="held-out success")
    text = "\n".join([
        intro.rstrip(), "",
        *(f"{line}  " for line in lines), *([""] if lines else []),
        markdown_table(ARM_HEADER, arm_rows), "",
        f"![success against environment steps]({PLOT_ENV_STEPS})", "",
        f"![success against wall time]({PLOT_WALL_TIME})", "",
        "Each curve is drawn where every seed of its arm has data, so the wall-time plot stops where the "
        "arm's fastest seed finished.", "",
        "## How the numbers are made", "",
        "Each cell is read from the runs' own `metrics.jsonl` and `eval.json` (`agentrl/report.py`):", "",
        *_DEFINITIONS, "",
        "## Every run", "",
        markdown_table(RUN_HEADER, run_rows), "",
        "## Reproduce", "",
        "```bash", *commands, "```", "",
    ])
    path = out / REPORT_FILE
    path.write_text(text)
    return path


_DEFINITIONS = (
    "- **held-out success**: the final policy's success rate on held-out tasks (`eval.json`), the mean over "
    "seeds ± the half-width of a 95% t interval (n/a with one seed).",
    "- **success AUC**: training `rollout/success_rate` integrated over environment steps "
    "(`rollout/env_steps`), divided by the budget: the mean training success over the budget.",
    "- **env steps**: the last `rollout/env_steps` (the last iteration ends whole, so a little over the "
    "budget); **iterations** include PPO's critic pre-training.",
    "- **generated tokens**: the sum of `rollout/policy_tokens`.",
    "- **wall time**: the sum of every `perf/seconds_*` phase (rollout, advantages, critic, policy, "
    "checkpoint).",
    "- **learner s / iteration**: the mean of `perf/seconds_advantages + perf/seconds_critic + "
    "perf/seconds_policy`.",
    "- **peak memory**: the largest `perf/peak_memory_mb` over iterations and seeds (reset before each run).",
    "- **sub-traces / episode**: `rollout/sub_traces_mean` averaged over every training episode.",
    "- Plots: the training success per iteration, smoothed by a trailing moving mean, averaged over seeds; "
    "the band spans the seeds' min to max. A curve covers the range every seed reached: against wall "
    "time it ends at the fastest seed's last iteration.",
    f"- The verdict: the first arm against each other arm on held-out success per seed, {TEST_NAME} "
    f"(two-sided, unequal variances, significance level {ALPHA}), the number of seeds given; it assumes "
    "roughly normal per-seed values, which a few seeds cannot check (`agentrl/significance.py`).",
)
