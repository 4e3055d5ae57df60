"""A daemon thread that runs calls one at a time, for the time limits on tool calls and environment calls.

Python cannot stop a thread, so a call past its limit is abandoned, not killed: the caller stops waiting,
retires the worker (its thread exits once the hung call returns, if it ever does) and uses a fresh one for
the next call. ``agentrl.tools`` (a tool's ``timeout_s``) and ``agentrl.env_calls`` (``env_timeout_s``)
both build on this. This module imports no torch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One call handed to a worker; ``done`` is set once ``value`` or ``exc`` is filled."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    exc: BaseException | None = None


class WorkerThread:
    """A daemon thread named ``name`` running jobs one at a time; a hung job keeps only this thread busy."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.value = job.fn()
            except BaseException as e:  # noqa: BLE001 - whatever the call raises is handed to the caller
                job.exc = e
            job.done.set()

    def run(self, fn: Callable[[], Any], timeout_s: float) -> Job | None:
        """Run ``fn`` here and wait at most ``timeout_s`` seconds: its finished job (``value`` or ``exc``),
        or None when it ran past the limit (the call is abandoned; retire this worker)."""
        job = Job(fn)
        self._jobs.put(job)
        return job if job.done.wait(timeout_s) else None

    def retire(self) -> None:
        """Let the thread exit once its current job returns, if it ever does."""
        self._jobs.put(None)
