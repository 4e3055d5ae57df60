"""Continuous batching across turns: sampling never waits for a tool, a turn never waits for another's.

``Runner.run`` works in rounds: one ``generate`` for every episode in flight, then every environment
step, one after the other. A round lasts as long as its longest action, and the model is idle while the
tools run. ``ContinuousRunner`` drives the same episode state machine (``agentrl.runner.Runner``'s
phases, budgets, compaction and episode records, unchanged) step by step instead:

- a step-wise sampler (``StepSampler``; ``agentrl.slot_sampler.SlotSampler``) decodes one token for
  every session that is generating; a session whose turn ends leaves the batch at once;
- its action goes to a thread pool, where the environment steps (the tools run with their own time
  limits) and the runner appends the observation, compacts, or ends the episode, while the others keep
  decoding;
- what the worker did to the sampler (open, append, close) is recorded and applied by the sampling
  thread when the worker is done, and the session joins the next step.

Lanes and reproducibility. The run has ``min(max_concurrent, tasks)`` lanes; task i runs in lane
``i % lanes`` after the task before it in that lane, with that lane's environment and cache slot. Each
turn is sampled with a seed drawn from (the run's seed, the task's index, the turn's number), and the
slot sampler's rows do not depend on each other; so every episode is a function of its task and the
run's seed alone: the same whatever the tools' timing and whichever sessions happen to share a step.
With greedy decoding the episodes are those of ``Runner.run`` (which batches rows differently: equal up
to float rounding, tokens identical unless two logits tie to about 1e-6); sampled episodes differ from
``Runner.run``'s, whose draws depend on each row's place in its round's batch.

Departures from ``Runner.run``: a summary is sampled in one piece (no round to keep short); no teacher
mode (``Runner.run(teacher=True)`` needs no sampler). The runner's methods are called from worker
threads, one run at a time in each, with a chat format whose tokenizer calls are serialised by a lock.
This module imports no torch.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrl.chat import ChatFormat
from agentrl.env import Env
from agentrl.runner import Failure, Runner, RunnerConfig, RunResult, Task, _Run, run_metrics
from agentrl.sampling import Generation, SamplingParams
from agentrl.types import Episode

__all__ = ["ContinuousRunner", "StepSampler"]


class StepSampler(Protocol):
    """A sampler driven one decode step at a time, sessions pinned to lanes (``SlotSampler``)."""

    slots: int

    def open(self, session: int, prompt_ids: Sequence[int], slot: int) -> None: ...
    def append(self, session: int, token_ids: Sequence[int]) -> None: ...
    def close(self, session: int) -> None: ...
    def begin(self, session: int, params: SamplingParams) -> None: ...
    def step(self) -> list[tuple[int, Generation]]: ...

    @property
    def generating(self) -> int: ...


class _Recorder:
    """The ``Sampler`` a worker's runner sees: it numbers sessions and records open/append/close for the
    sampling thread to apply (a worker never touches the real sampler)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next = 0

    def bind(self, ops: list[tuple[Any, ...]]) -> None:
        self._local.ops = ops

    def open(self, prompt_ids: Sequence[int]) -> int:
        with self._lock:
            self._next += 1
            sid = self._next
        self._local.ops.append(("open", sid, list(prompt_ids)))
        return sid

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        self._local.ops.append(("append", session, list(token_ids)))

    def close(self, session: int) -> None:
        self._local.ops.append(("close", session))

    def generate(self, sessions: Sequence[int], params: Any) -> list[Generation]:
        raise RuntimeError("a worker never samples")


class _LockedChat:
    """A ``ChatFormat`` whose methods run one at a time (a fast tokenizer is not safe across threads)."""

    def __init__(self, chat: ChatFormat) -> None:
        self._chat, self._lock = chat, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._chat, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)
        return locked


@dataclass
class _Lane:
    """One lane: its tasks in order, its environment, and the run in it."""

    slot: int
    tasks: deque[tuple[int, Task]]
    env: Env | None = None
    run: _Run | None = None
    turns: int = 0  # generations of the current run, for its seeds


@dataclass
class _Job:
    """A worker's task (start a run, or hand it a generation) and the sampler calls it made."""

    lane: _Lane
    index: int  # the task's, for a start job
    ops: list[tuple[Any, ...]] = field(default_factory=list)


def turn_seed(base: int, index: int, turn: int) -> int:
    """The sampling seed of a task's turn: a function of the run's seed, the task and the turn only."""
    return random.Random(f"{base}:{index}:{turn}").randrange(2**31)


class ContinuousRunner:
    """Runs episodes with continuous batching; see the module docstring.

    Args:
        sampler: the step-wise sampler, with one slot per lane (at least ``min(max_concurrent, tasks)``).
        chat: the chat format of the sampler's model.
        config: budgets and sampling settings, as for ``Runner``.
        workers: threads stepping environments (default: one per lane).
    """

    def __init__(self, sampler: StepSampler, chat: ChatFormat, config: RunnerConfig, *,
                 workers: int | None = None) -> None:
        self.sampler = sampler
        self.chat = chat
        self.config = config
        self.workers = workers
        self._recorder = _Recorder()
        self._runner = Runner(self._recorder, _LockedChat(chat), config)  # type: ignore[arg-type]

    def run(
        self, make_env: Callable[[], Env], tasks: Sequence[Task], *, seed: int | None = None
    ) -> RunResult:
        """Run every task to its end; the episodes come back in task order, as from ``Runner.run``."""
        lanes_n = min(self.config.max_concurrent, len(tasks), self.sampler.slots)
        if not tasks:
            return RunResult([], [], run_metrics([], [], 0, 0.0))
        base = random.Random(seed).randrange(2**31)
        lanes = [_Lane(i, deque((j, t) for j, t in enumerate(tasks) if j % lanes_n == i))
                 for i in range(lanes_n)]
        episodes: dict[int, Episode] = {}
        failures: dict[int, Failure] = {}
        sampled = 0
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.workers or lanes_n) as pool:
            jobs: dict[Future[Any], _Job] = {}
            for lane in lanes:
                self._next_task(pool, jobs, lane, make_env)
            by_session: dict[int, _Lane] = {}
            while jobs or self.sampler.generating:
                block = self.sampler.generating == 0
                finished, _ = wait(list(jobs), timeout=None if block else 0, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = jobs.pop(future)
                    outcome = future.result()  # a worker's own bug is the run's, not an episode's
                    self._apply(job)
                    if isinstance(outcome, Failure):  # the task could not start
                        failures[job.index] = outcome
                        if outcome.env_broken:
                            job.lane.env = None
                        self._next_task(pool, jobs, job.lane, make_env)
                        continue
                    if isinstance(outcome, _Run):  # it started
                        job.lane.run = outcome
                    self._after(pool, jobs, job.lane, make_env, base, by_session, episodes, failures)
                for sid, gen in self.sampler.step():
                    lane = by_session.pop(sid)
                    sampled += len(gen.token_ids)
                    self._submit(pool, jobs, lane, self._runner._on_generation, lane.run, gen)
        ordered = [episodes[i] for i in sorted(episodes)]
        failed = [failures[i] for i in sorted(failures)]
        return RunResult(ordered, failed, run_metrics(ordered, failed, sampled, time.perf_counter() - start))

    # ---- the sampling thread's side -----------------------------------------------------------------

    def _apply(self, job: _Job) -> None:
        """The sampler calls the worker made, in its order, on the real sampler."""
        for op in job.ops:
            match op:
                case ("open", sid, ids):
                    self.sampler.open(sid, ids, job.lane.slot)
                case ("append", sid, ids):
                    self.sampler.append(sid, ids)
                case ("close", sid):
                    self.sampler.close(sid)

    def _after(self, pool: ThreadPoolExecutor, jobs: dict[Future[Any], _Job], lane: _Lane,
               make_env: Callable[[], Env], base: int, by_session: dict[int, _Lane],
               episodes: dict[int, Episode], failures: dict[int, Failure]) -> None:
        """The lane's run after a worker: it samples its next turn, or it ended and the lane goes on."""
        run = lane.run
        assert run is not None
        if run.phase == "done":
            episode = self._runner._episode(run)
            if episode.num_policy_tokens == 0:  # nothing to train on: a failed task, as in Runner.run
                failures[run.index] = Failure(run.task, f"no policy token: the episode ended ({run.reason}) "
                                                        "before its first action")
            else:
                episodes[run.index] = episode
            if run.reason == "env_error":  # an env that crashed is not reused
                lane.env = None
            self._next_task(pool, jobs, lane, make_env)
            return
        assert run.window is not None
        params = self._runner._params(run, turn_seed(base, run.index, lane.turns), chunked=False)
        lane.turns += 1
        self.sampler.begin(run.window.session, params)
        by_session[run.window.session] = lane

    def _next_task(self, pool: ThreadPoolExecutor, jobs: dict[Future[Any], _Job], lane: _Lane,
                   make_env: Callable[[], Env]) -> None:
        lane.run, lane.turns = None, 0
        if not lane.tasks:
            return
        index, task = lane.tasks.popleft()
        if lane.env is None:
            lane.env = make_env()
        self._submit(pool, jobs, lane, self._runner._start, index, task, lane.env, index=index)

    def _submit(self, pool: ThreadPoolExecutor, jobs: dict[Future[Any], _Job], lane: _Lane,
                fn: Callable[..., Any], *args: Any, index: int = -1) -> None:
        job = _Job(lane, index)

        def work() -> Any:
            self._recorder.bind(job.ops)
            return fn(*args)
        jobs[pool.submit(work)] = job

