"""What the bubblewrap sandbox costs: sandboxed against unsandboxed calls and code_fix episodes.

    python benchmarks/sandbox_overhead.py                    # 40 calls and 6 episodes per arm, 3 repeats
    python benchmarks/sandbox_overhead.py --calls 100 --episodes 10 --setting long

Both arms run the same work side by side in one process, alternating every repeat (the median of the
repeats is reported):

- ``sandboxed``: ``agentrl.sandbox.Sandbox`` (bwrap with new user, network, PID, IPC and UTS
  namespaces, the read-only binds, the resource limits and the drop to the sandbox's uid);
- ``unsandboxed``: ``Sandbox(unsafe_no_sandbox=True)``: the same subprocess start, resource limits,
  output capture and wall clock, without bwrap.

Per call: one ``true`` (the start cost alone: nothing to run) and one ``python3 -c pass`` (a start
plus a Python interpreter, what most tool calls pay). Per episode: the code_fix expert playing whole
episodes of ``--setting`` (creating the work directory, writing the project, every test run and the
grading, removing the directory). Ratios are the result; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentrl.envs.code_fix import CodeFix  # noqa: E402

from agentrl.sandbox import Sandbox, python_executable  # noqa: E402


def time_calls(unsafe: bool, command: list[str], calls: int) -> float:
    """Seconds per call of ``command`` over ``calls`` calls in one sandbox."""
    with Sandbox(unsafe_no_sandbox=unsafe) as box:
        box.run(command)  # warm the page cache once
        start = time.perf_counter()
        for _ in range(calls):
            result = box.run(command)
            assert result.returncode == 0, result
        return (time.perf_counter() - start) / calls


def time_episodes(unsafe: bool, setting: str, episodes: int) -> float:
    """Seconds per code_fix expert episode over ``episodes`` seeds."""
    env = CodeFix(setting=setting, unsafe_no_sandbox=unsafe)
    start = time.perf_counter()
    for seed in range(episodes):
        env.reset(seed=seed)
        while (action := env.expert_action()) is not None:
            result = env.step(action)
        assert result.info.get("success"), f"the expert failed seed {seed}"
    return (time.perf_counter() - start) / episodes


def side_by_side(measure: Callable[[bool], float], repeats: int) -> tuple[float, float]:
    """Median seconds of the sandboxed and unsandboxed arm, alternating which goes first."""
    arms: dict[bool, list[float]] = {True: [], False: []}
    for r in range(repeats):
        for unsafe in ((False, True) if r % 2 == 0 else (True, False)):
            arms[unsafe].append(measure(unsafe))
    return statistics.median(arms[False]), statistics.median(arms[True])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--setting", default="short", choices=("short", "medium", "long"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [
        ("call: true", lambda u: time_calls(u, ["true"], args.calls)),
        ("call: python3 -c pass", lambda u: time_calls(u, [python_executable(), "-c", "pass"], args.calls)),
        (f"episode: code_fix {args.setting}", lambda u: time_episodes(u, args.setting, args.episodes)),
    ]
    print(f"{'what':<28} {'sandboxed ms':>13} {'unsandboxed ms':>15} {'ratio':>6} {'extra ms':>9}")
    for label, measure in rows:
        boxed, bare = side_by_side(measure, args.repeats)
        print(f"{label:<28} {boxed * 1e3:>13.2f} {bare * 1e3:>15.2f} {boxed / bare:>6.2f} "
              f"{(boxed - bare) * 1e3:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
