"""Calls into an environment with a time limit, and what an environment may raise.

The runner steps its environments one after another in its own process. Without a limit, one ``step``
or ``reset`` that hangs holds every episode of the batch for as long as it hangs. So every call the
runner makes into an environment (building it, ``reset``, ``tools``, ``step``, ``expert_action``,
``state_digest``) goes through an ``EnvCalls``: with a positive ``timeout_s`` the call runs on a worker
thread owned by that environment, and the runner waits at most ``timeout_s`` for it. A call past its
limit raises ``EnvTimeout`` in the runner: the episode (or the task) ends with the reason recorded, the
environment is dropped and never reused (Python cannot stop a thread, so the hung call is abandoned,
not killed, and may still change the environment's state later), and the other episodes go on.

What an environment raises inside a call:

- any ``Exception``: the caller records it (``env_error`` or a failed task);
- ``SystemExit`` (an environment calling ``sys.exit``) and ``KeyboardInterrupt`` *raised by the
  environment's own code*: these are ``BaseException``, which a plain ``except Exception`` lets through
  to end the whole run. Raised inside the call they become ``EnvRaised`` (an ``Exception``), so they cost
  their episode only. A real Ctrl-C is different: it arrives in the main thread, which is waiting here,
  not running the environment, so it still stops the run (``agentrl train`` then resumes from its last
  checkpoint).
- With ``timeout_s`` None or 0 the call runs inline, with no limit and no thread; a ``SystemExit`` is
  still turned into ``EnvRaised``, but a ``KeyboardInterrupt`` cannot be told from a real Ctrl-C there and
  stops the run.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from agentrl.textsafety import describe_exception
from agentrl.worker_thread import WorkerThread

T = TypeVar("T")


class EnvTimeout(TimeoutError):
    """An environment call ran past its time limit and was abandoned."""


class EnvRaised(RuntimeError):
    """An environment raised ``SystemExit`` or ``KeyboardInterrupt`` inside a call (module docstring)."""


def _reraise(exc: BaseException, what: str) -> None:
    if isinstance(exc, Exception):
        raise exc
    raise EnvRaised(f"{what} raised {describe_exception(exc)}") from exc


class EnvCalls:
    """Runs calls into environments under a time limit; one worker thread per environment.

    Args:
        timeout_s: seconds a call may take before it is abandoned (``EnvTimeout``); None or 0: inline,
            no limit.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._workers: dict[int, WorkerThread] = {}  # id(env) -> its worker; dropped with the env
        self.num_timeouts = 0

    def call(self, key: object, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the time limit, on the worker of ``key`` (the environment, or None while it is
        being built); ``what`` names the call in messages (``"step()"``)."""
        if not self.timeout_s:
            try:
                return fn()
            except SystemExit as e:
                _reraise(e, what)
                raise  # unreachable; _reraise always raises
        worker = self._workers.get(id(key)) if key is not None else None
        if worker is None:
            worker = WorkerThread("agentrl-env-worker")
            if key is not None:
                self._workers[id(key)] = worker
        job = worker.run(fn, self.timeout_s)
        if job is None:
            self.drop(key)  # that thread is stuck with the call; the env is not used again
            if key is None:
                worker.retire()
            self.num_timeouts += 1
            raise EnvTimeout(f"{what} did not return within env_timeout_s={self.timeout_s:g} s and was "
                             "abandoned; the environment is not reused")
        if key is None:
            worker.retire()  # a one-off call (building an env): its thread ends
        if job.exc is not None:
            _reraise(job.exc, what)
        return job.value  # type: ignore[no-any-return]

    def drop(self, key: object) -> None:
        """Forget the environment ``key``: its worker thread ends once its current call returns."""
        worker = self._workers.pop(id(key), None)
        if worker is not None:
            worker.retire()

    def close(self) -> None:
        """End every worker thread (each once its current call, if any, returns)."""
        for key in list(self._workers):
            self._workers.pop(key).retire()
