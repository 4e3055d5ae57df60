"""Training metrics: ``metrics.jsonl``, TensorBoard events and a progress line (docs/design.md section 10).

Every key is a constant below, namespaced ``rollout/``, ``policy/``, ``critic/``, ``adv/``, ``credit/``,
``perf/`` (plus ``skipped_updates`` and ``grad_norm/``), and described in docs/metrics.md; ``ALL_KEYS``
lists them.

``MetricsLogger(run_dir)`` writes, for each ``log(iteration, metrics)``:

- one line of ``run_dir/metrics.jsonl``: ``{"iteration": i, "rollout/reward_mean": 0.5, ...}``, flushed.
  Values are floats; a NaN or infinite value is written as ``null`` (strict JSON has no NaN), so a
  ``null`` in the file means "not finite" and ``read_metrics`` gives it back as None.
- TensorBoard scalars under ``run_dir/tensorboard/`` at step ``i`` (the raw value, NaN included), when
  the ``tensorboard`` package is importable; otherwise a warning, once, and the run goes on.
- a progress line on stderr: ``[######--------------] 3/10 reward=0.42 success=0.5 ... eta=1m05s``.

Resuming after iteration ``k`` (``resume_from_iteration=k``) drops the lines of iterations after ``k``
from ``metrics.jsonl`` and purges TensorBoard's events from step ``k + 1`` on, so a resumed run's
records read as one uninterrupted run. Without it, a non-empty ``metrics.jsonl`` is an error, never
silently appended to.

This module imports torch only inside functions.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from agentrl.run_result import TRUNCATION_REASONS
from agentrl.types import Episode

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Rollout: what the policy did this iteration (agentrl.runner.run_metrics, renamed; see rollout_metrics).
ROLLOUT_EPISODES = "rollout/episodes"
ROLLOUT_FAILED_TASKS = "rollout/failed_tasks"
ROLLOUT_SUCCESS_RATE = "rollout/success_rate"
ROLLOUT_REWARD_MEAN = "rollout/reward_mean"
ROLLOUT_REWARD_STD = "rollout/reward_std"
ROLLOUT_TURNS_MEAN = "rollout/turns_mean"
ROLLOUT_SUB_TRACES_MEAN = "rollout/sub_traces_mean"
ROLLOUT_COMPACTIONS_MEAN = "rollout/compactions_mean"
ROLLOUT_TOOL_ERRORS_MEAN = "rollout/tool_errors_mean"
ROLLOUT_TOOL_ERRORS = "rollout/tool_errors"
ROLLOUT_CUT_RESPONSES = "rollout/cut_responses"
ROLLOUT_CUT_SUMMARIES = "rollout/cut_summaries"
ROLLOUT_TERMINATED = "rollout/terminated"
ROLLOUT_TOKENS = "rollout/tokens"
ROLLOUT_POLICY_TOKENS = "rollout/policy_tokens"
ROLLOUT_TRUNCATED = {reason: f"rollout/truncated_{reason}" for reason in TRUNCATION_REASONS}
# The run's environment steps so far (agentrl.train; the budget run.max_env_steps counts them).
ROLLOUT_ENV_STEPS = "rollout/env_steps"
# The sampler's recorded log-probs against the learner's recomputation (rollout.backend vllm, or TIS).
ROLLOUT_LOGPROB_MISMATCH_MEAN = "rollout/logprob_mismatch_mean"
ROLLOUT_LOGPROB_MISMATCH_MAX = "rollout/logprob_mismatch_max"
# Policy updates between the weights that sampled an iteration and the learner's (distributed.overlap).
ROLLOUT_POLICY_LAG = "rollout/policy_lag"
# Ray rollout workers that died or hung during the iteration's rollout and were replaced.
ROLLOUT_LOST_WORKERS = "rollout/lost_workers"

# Policy update (means over the iteration's mini-batches).
POLICY_LOSS = "policy/loss"
POLICY_CLIP_FRAC = "policy/clip_frac"
POLICY_APPROX_KL = "policy/approx_kl"
POLICY_ENTROPY = "policy/entropy"
POLICY_KL = "policy/kl"
POLICY_DUAL_CLIP_FRAC = "policy/dual_clip_frac"
POLICY_RATIO_MEAN = "policy/ratio_mean"

# Critic update.
CRITIC_LOSS = "critic/loss"
CRITIC_EXPLAINED_VARIANCE = "critic/explained_variance"
CRITIC_CLIP_FRAC = "critic/clip_frac"
CRITIC_VALUE_MEAN = "critic/value_mean"
CRITIC_RETURN_MEAN = "critic/return_mean"
CRITIC_PRETRAINING = "critic/pretraining"

# Advantages, as the loss sees them (after whitening, when it is on).
ADV_MEAN = "adv/mean"
ADV_STD = "adv/std"

# Credit diagnostics (agentrl.diagnostics): per sub-trace index (windows 3 and later pooled), and groups.
CREDIT_SLOTS = ("0", "1", "2", "3+")
CREDIT_STATS = ("adv_mean", "adv_var", "explained_variance")
CREDIT_SUB_TRACE = {
    (slot, stat): f"credit/sub_trace_{slot}/{stat}" for slot in CREDIT_SLOTS for stat in CREDIT_STATS
}
CREDIT_GROUPS = "credit/groups"
CREDIT_UNEVEN_GROUPS = "credit/uneven_groups"

# Performance.
PHASES = ("rollout", "advantages", "critic", "policy", "checkpoint")
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_SECONDS = {phase: f"perf/seconds_{phase}" for phase in PHASES}
PERF_PEAK_MEMORY_MB = "perf/peak_memory_mb"
PERF_PADDING_FRACTION = "perf/padding_fraction"
PERF_WEIGHT_SYNC_S = "perf/weight_sync_s"
PERF_DECODE_PATH = "perf/decode_path"  # 1 = the lean Qwen2 decode step, 0 = transformers' forward

# Optimisation health.
SKIPPED_UPDATES = "skipped_updates"
GRAD_NORM_POLICY = "grad_norm/policy"
GRAD_NORM_CRITIC = "grad_norm/critic"

ALL_KEYS: tuple[str, ...] = (
    ROLLOUT_EPISODES, ROLLOUT_FAILED_TASKS, ROLLOUT_SUCCESS_RATE, ROLLOUT_REWARD_MEAN, ROLLOUT_REWARD_STD,
    ROLLOUT_TURNS_MEAN, ROLLOUT_SUB_TRACES_MEAN, ROLLOUT_COMPACTIONS_MEAN, ROLLOUT_TOOL_ERRORS_MEAN,
    ROLLOUT_TOOL_ERRORS, ROLLOUT_CUT_RESPONSES, ROLLOUT_CUT_SUMMARIES, ROLLOUT_TERMINATED, ROLLOUT_TOKENS,
    ROLLOUT_POLICY_TOKENS, *ROLLOUT_TRUNCATED.values(), ROLLOUT_ENV_STEPS, ROLLOUT_LOGPROB_MISMATCH_MEAN,
    ROLLOUT_LOGPROB_MISMATCH_MAX, ROLLOUT_POLICY_LAG, ROLLOUT_LOST_WORKERS,
    POLICY_LOSS, POLICY_CLIP_FRAC, POLICY_APPROX_KL, POLICY_ENTROPY, POLICY_KL, POLICY_DUAL_CLIP_FRAC,
    POLICY_RATIO_MEAN, CRITIC_LOSS, CRITIC_EXPLAINED_VARIANCE, CRITIC_CLIP_FRAC, CRITIC_VALUE_MEAN,
    CRITIC_RETURN_MEAN, CRITIC_PRETRAINING, ADV_MEAN, ADV_STD,
    *CREDIT_SUB_TRACE.values(), CREDIT_GROUPS, CREDIT_UNEVEN_GROUPS,
    PERF_TOKENS_PER_S, *PERF_SECONDS.values(), PERF_PEAK_MEMORY_MB, PERF_PADDING_FRACTION, PERF_WEIGHT_SYNC_S,
    PERF_DECODE_PATH,
    SKIPPED_UPDATES, GRAD_NORM_POLICY, GRAD_NORM_CRITIC,
)

# agentrl.runner.run_metrics keys -> ours; the truncated_<reason> counts become rollout/truncated_<reason>.
_RUN_METRICS_KEYS = {
    "episodes": ROLLOUT_EPISODES,
    "failed_tasks": ROLLOUT_FAILED_TASKS,
    "success_rate": ROLLOUT_SUCCESS_RATE,
    "mean_reward": ROLLOUT_REWARD_MEAN,
    "mean_turns": ROLLOUT_TURNS_MEAN,
    "mean_compactions": ROLLOUT_COMPACTIONS_MEAN,
    "mean_tool_errors": ROLLOUT_TOOL_ERRORS_MEAN,
    "tool_errors": ROLLOUT_TOOL_ERRORS,
    "cut_responses": ROLLOUT_CUT_RESPONSES,
    "cut_summaries": ROLLOUT_CUT_SUMMARIES,
    "terminated": ROLLOUT_TERMINATED,
    "tokens": ROLLOUT_TOKENS,
    "policy_tokens": ROLLOUT_POLICY_TOKENS,
    "sampled_tokens_per_s": PERF_TOKENS_PER_S,
    "lost_workers": ROLLOUT_LOST_WORKERS,  # agentrl.ray_rollout's
}
# run_metrics keys left out on purpose: the rollout's wall time is perf/seconds_rollout (PhaseTimer).
RUN_METRICS_IGNORED = ("seconds",)

_TB_WARNED = False


def rollout_metrics(run_metrics: Mapping[str, float], episodes: Sequence[Episode]) -> dict[str, float]:
    """The ``rollout/`` metrics (and ``perf/tokens_per_s``) of one iteration's rollout.

    ``run_metrics`` is ``agentrl.runner.run_metrics(...)``, renamed key by key; ``episodes`` are the
    same episodes, for what the runner does not count: the sub-traces per episode and the reward's
    standard deviation (population, over episodes). With no episodes both are 0, as the runner's means
    are. A ``run_metrics`` key this module does not know passes through as ``rollout/<key>`` (never
    silently dropped); tests/test_metrics.py checks that every key the runner writes has a name here.
    """
    out: dict[str, float] = {}
    for key, value in run_metrics.items():
        if key in _RUN_METRICS_KEYS:
            out[_RUN_METRICS_KEYS[key]] = float(value)
        elif key not in RUN_METRICS_IGNORED:
            out[f"rollout/{key}"] = float(value)  # truncated_<reason>, and any key added to the runner
    rewards = [e.reward for e in episodes]
    n = len(episodes)
    mean = sum(rewards) / n if n else 0.0
    out[ROLLOUT_SUB_TRACES_MEAN] = sum(len(e.sub_traces) for e in episodes) / n if n else 0.0
    out[ROLLOUT_REWARD_STD] = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n) if n else 0.0
    return out


# ----------------------------------------------------------------------------------------------------
# Timing and memory.


class PhaseTimer:
    """Wall-clock seconds per phase of an iteration, as ``perf/seconds_<phase>``.

    ``with timer.phase("rollout"): ...`` adds the block's seconds to that phase (a phase entered twice
    adds up). On CUDA the block's queued kernels are waited for first, so the seconds are the phase's.
    ``metrics()`` gives the totals; ``reset()`` starts the next iteration.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as phase ``name`` (one of ``PHASES``, or any other name)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            _cuda_synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``{"perf/seconds_<phase>": seconds}`` for every phase timed since the last reset."""
        return {f"perf/seconds_{name}": s for name, s in self.seconds.items()}

    def reset(self) -> None:
        self.seconds.clear()


def _cuda_synchronize() -> None:
    torch = sys.modules.get("torch")  # a run that never imported torch has nothing queued
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory_mb(device: Any = None) -> float:
    """Peak memory in MiB: on a CUDA device, ``torch.cuda.max_memory_allocated`` (tensors, since the
    start or the last ``reset_peak_memory``); on the CPU, the process's peak resident set size (Linux:
    ``VmHWM`` of ``/proc/self/status``, since the start or the last ``reset_peak_memory``; elsewhere
    ``getrusage`` maxrss, since the process started). ``device`` None: CUDA when available. NaN where
    the platform cannot tell (no ``resource`` module)."""
    import torch

    dev = _memory_device(device)
    if dev is not None and dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm / 2**10
    try:
        import resource
    except ImportError:
        return math.nan
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: Any = None) -> None:
    """Start ``peak_memory_mb``'s count again from now, so that several runs in one process (``agentrl
    compare``) each measure their own peak: ``torch.cuda.reset_peak_memory_stats`` on a CUDA device; on
    Linux, writing 5 to ``/proc/self/clear_refs`` resets the resident-set high-water mark to the current
    resident set. Elsewhere nothing can be reset and the peak stays the process's."""
    import torch

    dev = _memory_device(device)
    if dev is not None and dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _memory_device(device: Any) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else None


def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ----------------------------------------------------------------------------------------------------
# The logger.


def _json_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)  # ints, bools, numpy scalars, one-element tensors
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"metrics[{key!r}]: expected a number, got {type(value).__name__}") from None


class MetricsLogger:
    """Appends each iteration's metrics to ``metrics.jsonl``, TensorBoard and a progress line.

    Args:
        run_dir: the run's directory (created if missing).
        total_iterations: the run's length, for the progress bar and its ETA; None: no bar.
        tensorboard: write TensorBoard events (when the package is importable).
        progress: print the progress line to ``stream`` after each ``log``.
        resume_from_iteration: resuming after this iteration: drop later lines and TensorBoard steps.
        stream: where the progress line goes (stderr).
        label: a name that starts every progress line (the run's name), so the lines of several runs
            (``agentrl compare``) say whose they are.
        max_env_steps: the run's budget of environment steps; the bar and the ETA then follow whichever
            of the iterations and the budget will end the run first (the records' ``rollout/env_steps``).
        start_env_steps: the environment steps already taken when the logger starts (a resumed run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_iterations: int | None = None,
        tensorboard: bool = True,
        progress: bool = True,
        resume_from_iteration: int | None = None,
        stream: TextIO | None = None,
        label: str | None = None,
        max_env_steps: int | None = None,
        start_env_steps: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self.total_iterations = total_iterations
        self.progress = progress
        self.stream = stream
        self.label = label
        self.max_env_steps = max_env_steps
        self.start_env_steps = start_env_steps
        self._start = time.monotonic()
        self._first_iteration: int | None = None
        if resume_from_iteration is None:
            if self.path.exists() and self.path.stat().st_size > 0:
                raise FileExistsError(f"{self.path} already has metrics; resume the run or use a new run_dir")
        else:
            truncate_metrics(self.run_dir, resume_from_iteration)
        self._file = open(self.path, "a")
        self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR, resume_from_iteration) \
            if tensorboard else None

    def log(self, iteration: int, metrics: Mapping[str, Any], *, note: str | None = None) -> dict[str, float]:
        """Record one iteration's ``metrics`` (numbers by key); return them as floats. ``note`` ends the
        progress line (``critic pre-training``)."""
        if "iteration" in metrics:
            raise ValueError("metrics: 'iteration' is the record's own key, not a metric")
        values = {key: _as_float(key, value) for key, value in metrics.items()}
        record = {"iteration": iteration, **{k: _json_value(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=iteration)
            self._writer.flush()
        if self.progress:
            if self._first_iteration is None:
                self._first_iteration = iteration
            line = progress_line(iteration, self.total_iterations, values, eta_s=self._eta(iteration, values),
                                 label=self.label, max_env_steps=self.max_env_steps)
            print(line + (f" ({note})" if note else ""), file=self.stream or sys.stderr, flush=True)
        return values

    def _eta(self, iteration: int, values: Mapping[str, float]) -> float | None:
        """Seconds left: the mean time per iteration so far times the iterations left, or, with a
        budget, the time per environment step times the steps left, whichever is sooner."""
        if self.total_iterations is None or self._first_iteration is None:
            return None
        elapsed = time.monotonic() - self._start
        done = iteration - self._first_iteration + 1
        eta = elapsed / done * max(self.total_iterations - iteration, 0)
        steps = values.get(ROLLOUT_ENV_STEPS)
        if self.max_env_steps is not None and steps is not None and steps > self.start_env_steps:
            per_step = elapsed / (steps - self.start_env_steps)
            eta = min(eta, per_step * max(self.max_env_steps - steps, 0.0))
        return eta

    def close(self) -> None:
        """Flush and close the file and the TensorBoard writer."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(log_dir: Path, resume_from_iteration: int | None) -> Any:
    """A TensorBoard ``SummaryWriter``, or None (warned once per process) without the package."""
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        if not _TB_WARNED:
            warnings.warn(f"TensorBoard logging is off: {err} (pip install tensorboard)", stacklevel=3)
            _TB_WARNED = True
        return None
    purge = None if resume_from_iteration is None else resume_from_iteration + 1
    if purge is not None:
        _wait_past_event_files(log_dir)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge)


def _wait_past_event_files(log_dir: Path) -> None:
    """Wait until the clock's second is past every event file's in ``log_dir``. TensorBoard reads the
    files in name order, ``events.out.tfevents.<second>.<host>.<pid>.<n>``, with ``n`` a counter of the
    process: within one second a writer numbered 10 would sort before one numbered 9, and the purge
    (which must come after the old events) would be read first and purge nothing."""
    seconds = [int(p.name.split(".")[3]) for p in log_dir.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl`` in order (``null`` values as None). A last line cut
    off by a crash is skipped; any other unreadable line raises ``ValueError``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                break
            raise ValueError(f"{path}:{n}: not a JSON record") from None
    return records


def truncate_metrics(run_dir: str | Path, iteration: int) -> int:
    """Keep only the records of ``metrics.jsonl`` up to ``iteration`` (atomically: a temporary file
    ``os.replace``d over it); return how many remain."""
    path = Path(run_dir) / METRICS_FILE
    kept = [r for r in read_metrics(run_dir) if r["iteration"] <= iteration]
    tmp = path.with_name(f"{METRICS_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


# ----------------------------------------------------------------------------------------------------
# The progress line.

# (label, key, format) in the order the progress line shows them; a metric not logged is left out.
PROGRESS_FIELDS = (
    ("reward", ROLLOUT_REWARD_MEAN, ".3g"),
    ("success", ROLLOUT_SUCCESS_RATE, ".2f"),
    ("turns", ROLLOUT_TURNS_MEAN, ".3g"),
    ("policy_loss", POLICY_LOSS, ".3g"),
    ("kl_old", POLICY_APPROX_KL, ".2g"),  # to the policy that sampled, not to the reference
    ("critic_loss", CRITIC_LOSS, ".3g"),
    ("ev", CRITIC_EXPLAINED_VARIANCE, ".2f"),  # NaN when the returns have no variance: "undefined"
    ("tok/s", PERF_TOKENS_PER_S, ".0f"),
)


def progress_line(
    iteration: int,
    total: int | None,
    metrics: Mapping[str, float],
    *,
    width: int = 20,
    eta_s: float | None = None,
    label: str | None = None,
    max_env_steps: int | None = None,
) -> str:
    """One line: the run's ``label``, a bar ``[#####-----] 5/10`` (``iter 5`` without a total), with a
    budget the environment steps ``steps=480/960`` (the bar fills by whichever of iterations and steps is
    further along), the key metrics present in ``metrics`` as ``name=value``, and the ETA when given."""
    parts = [label] if label else []
    steps = metrics.get(ROLLOUT_ENV_STEPS)
    if total is not None and total > 0:
        done = iteration / total
        if max_env_steps is not None and steps is not None and math.isfinite(steps):
            done = max(done, steps / max_env_steps)
        filled = min(max(round(width * done), 0), width)
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {iteration}/{total}")
    else:
        parts.append(f"iter {iteration}")
    if max_env_steps is not None and steps is not None and math.isfinite(steps):
        parts.append(f"steps={int(steps)}/{max_env_steps}")
    for name, key, fmt in PROGRESS_FIELDS:
        if key in metrics:
            value = metrics[key]
            undefined = key == CRITIC_EXPLAINED_VARIANCE and math.isnan(value)
            parts.append(f"{name}=undefined" if undefined else f"{name}={value:{fmt}}")
    if eta_s is not None and math.isfinite(eta_s):
        parts.append(f"eta={_duration(eta_s)}")
    return " ".join(parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
