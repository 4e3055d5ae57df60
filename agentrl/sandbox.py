"""A sandbox for running model-written commands and code: bubblewrap namespaces plus resource limits.

Each ``Sandbox`` owns one fresh work directory (one per episode). Every ``run`` starts a new
``bwrap`` process tree with its own network (none), PID and IPC namespaces and a new session, sees a
read-only ``/usr`` (and the ``/lib*``, ``/bin`` links into it), an empty ``/tmp``, a fresh ``/proc``
and ``/dev``, and the work directory read-write at ``/work``. Nothing else of the host is mounted.

Limits, set in the child before ``bwrap`` starts (``resource.setrlimit``): CPU seconds, address space,
processes, file size, no core dumps. When the host runs as root the child also drops to a uid of its
own (one per sandbox), because the kernel never applies the process limit to root; inside, a user
namespace maps that uid to 1000. A wall-clock limit kills the whole process group, and bwrap's
``--die-with-parent`` plus the PID namespace take every process of the call down with it, so no
process outlives a call (a background job dies when its call returns). Output (stdout and stderr,
merged as a terminal shows them) is capped at ``output_bytes``; the bytes past the cap are drained
and counted, and ``RunResult.dropped_bytes`` records how many.

Where ``bwrap`` is missing, ``Sandbox()`` raises ``SandboxUnavailable`` with one line naming the
package. ``Sandbox(unsafe_no_sandbox=True)`` runs commands directly on the host with the same
resource limits and no isolation at all: only for code you trust (and for measuring the overhead).

This module imports no torch.
"""

from __future__ import annotations

import itertools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORK = "/work"  # where the work directory appears inside the sandbox
PREFIX = "agentrl-sandbox-"
INSIDE_UID = 1000
TOOL_BIN = "/run/agentrl/bin"  # on PATH inside: holds a ``python`` link to the sandbox's Python
_UID_BASE = 300_000  # host uids for sandboxes when running as root: unused by any real account
_counter = itertools.count()


class SandboxUnavailable(RuntimeError):
    """The isolation tool is missing or does not work here; the message says what to install."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one call.

    Attributes:
        wall_s: wall-clock seconds before the whole process tree is killed.
        cpu_s: CPU seconds (RLIMIT_CPU) of each process.
        memory_mb: address space (RLIMIT_AS) of each process, in MiB.
        processes: processes and threads at once (RLIMIT_NPROC) for the sandbox's uid.
        file_mb: the largest file a process may write (RLIMIT_FSIZE), in MiB.
        output_bytes: stdout and stderr bytes kept; the rest is drained and counted.
    """

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    processes: int = 64
    file_mb: int = 16
    output_bytes: int = 16_000

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "file_mb", "output_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")


@dataclass(frozen=True)
class RunResult:
    """What one call gave back.

    Attributes:
        returncode: the command's exit status (negative: killed by that signal; None: killed at the
            wall-clock limit).
        output: stdout and stderr merged, decoded as UTF-8 (invalid bytes replaced), at most
            ``output_bytes`` bytes of it.
        timed_out: the wall-clock limit killed it.
        dropped_bytes: output bytes past the cap, read and thrown away.
    """

    returncode: int | None
    output: str
    timed_out: bool = False
    dropped_bytes: int = 0

    def describe(self) -> str:
        """The result as the model sees it: the output, then what ended the call and any cut."""
        parts = [self.output.rstrip("\n")] if self.output.strip() else []
        if self.dropped_bytes:
            parts.append(f"[output cut: {self.dropped_bytes} more bytes dropped]")
        if self.timed_out:
            parts.append("[killed: wall-clock limit reached]")
        else:
            parts.append(f"[exit code {self.returncode}{_signal_note(self.returncode)}]")
        return "\n".join(parts)


def _signal_note(returncode: int | None) -> str:
    """``": killed by SIGXCPU (the CPU-time limit)"`` for a status that means a signal, else ``""``.

    A negative status is a signal; a shell reports its child's signal n as 128 + n."""
    if returncode is None or 0 <= returncode <= 128:
        return ""
    number = -returncode if returncode < 0 else returncode - 128
    try:
        name = signal.Signals(number).name
    except ValueError:
        return ""
    why = {"SIGXCPU": " (the CPU-time limit)", "SIGXFSZ": " (the file-size limit)"}.get(name, "")
    return f": killed by {name}{why}"


def bwrap_path() -> str | None:
    """The ``bwrap`` executable on PATH, or None."""
    return shutil.which("bwrap")


def _system_binds() -> list[str]:
    """Read-only binds of the system: /usr, and /lib*, /bin, /sbin as links or binds, as on the host."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if os.path.isdir("/etc/alternatives"):  # links some /usr/bin tools go through; holds no secrets
        args += ["--ro-bind", "/etc/alternatives", "/etc/alternatives"]
    return args


def python_executable() -> str:
    """The Python that sandboxed code runs: the system's ``/usr/bin/python3``, else this one."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs(root: str | None = None) -> list[str]:
    """Remove work directories left by processes that died without cleaning up (e.g. a killed run).

    A directory is named ``agentrl-sandbox-<pid>-...``; it is stale when that pid is gone. Returns the
    removed paths.
    """
    root = root or tempfile.gettempdir()
    removed = []
    for path in Path(root).glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


class Sandbox:
    """One episode's sandbox: a fresh work directory and ``run`` for commands confined to it.

    Use as a context manager or call ``close()``; a sandbox that is garbage-collected or still open at
    interpreter exit removes its directory too. ``unsafe_no_sandbox=True`` runs on the host without
    isolation (resource limits only).
    """

    def __init__(self, limits: Limits | None = None, *, unsafe_no_sandbox: bool = False) -> None:
        self.limits = limits or Limits()
        self.unsafe_no_sandbox = bool(unsafe_no_sandbox)
        self._bwrap = bwrap_path()
        if self._bwrap is None and not self.unsafe_no_sandbox:
            raise SandboxUnavailable(
                "sandbox: bwrap not found; install the 'bubblewrap' package (apt-get install bubblewrap), "
                "or pass unsafe_no_sandbox=True to run model code on the host without isolation"
            )
        remove_stale_dirs()
        # as root, a uid of its own: the kernel never applies RLIMIT_NPROC to root's processes
        slot = (os.getpid() % 10_000) * 100 + next(_counter) % 100
        self.uid = None if os.geteuid() != 0 else _UID_BASE + slot
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.path = self.root / "work"  # the work directory; beside it, bin/ for the unsandboxed PATH
        self.root.chmod(0o711)  # the sandbox's uid must pass through to the work directory, not list
        self.path.mkdir()
        (self.root / "bin").mkdir()
        (self.root / "bin" / "python").symlink_to(python_executable())
        self.own(self.path)
        self.num_calls = 0
        self.num_capped = 0
        self.num_timeouts = 0
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once the work directory is removed."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Remove the work directory (no process of this sandbox outlives a call, so none is left)."""
        self._finalizer()

    def own(self, path: Path) -> None:
        """Give ``path`` to the sandbox's uid, so code inside can change a file the host wrote."""
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)

    def host_path(self, relative: str) -> Path:
        """The host path of ``relative`` (to the work directory), refusing anything that leaves it.

        A path that resolves outside the work directory (``..``, an absolute path elsewhere, a
        symlink the code planted pointing out) raises ValueError. ``/work/...`` is taken as relative.
        """
        if self.closed:
            raise RuntimeError("sandbox: used after close()")
        inside = relative == WORK or relative.startswith(WORK + "/")
        text = relative[len(WORK):].lstrip("/") if inside else relative
        root = self.path.resolve()
        target = (root / text).resolve()
        if target != root and root not in target.parents:
            raise ValueError(f"path: {relative!r} is outside the work directory")
        return target

    def argv(self, command: Sequence[str]) -> list[str]:
        """The full command line ``run`` starts for ``command``."""
        if self.unsafe_no_sandbox:
            return list(command)
        return [
            self._bwrap or "bwrap",
            "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            *_system_binds(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--symlink", python_executable(), f"{TOOL_BIN}/python",  # Debian ships only python3
            "--bind", str(self.path), WORK, "--chdir", WORK,
            "--", *command,
        ]

    def _preexec(self) -> None:
        """In the child, before exec: the resource limits, then (as root) the sandbox's own uid."""
        lim = self.limits
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (int(lim.cpu_s), int(lim.cpu_s) + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb * mb, lim.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_mb * mb, lim.file_mb * mb))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
        if self.uid is not None:
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)

    def run(self, command: Sequence[str], *, stdin: str | None = None) -> RunResult:
        """Run ``command`` (an argv list) in the sandbox, in the work directory; never raises for
        anything the command does."""
        if self.closed:
            raise RuntimeError("sandbox: used after close()")
        self.num_calls += 1
        tool_bin, home = (TOOL_BIN, WORK)
        if self.unsafe_no_sandbox:
            tool_bin, home = str(self.root / "bin"), str(self.path)
        env = {"PATH": f"{tool_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            self.argv(command), cwd=self.path, env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=self._preexec,
        )
        if stdin is not None:
            try:
                proc.stdin.write(stdin.encode())  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        kept, dropped, timed_out = self._collect(proc)
        output = kept.decode("utf-8", "replace")
        result = RunResult(None if timed_out else proc.returncode, output, timed_out, dropped)
        self.num_capped += dropped > 0
        self.num_timeouts += timed_out
        return result

    def run_python(self, code: str) -> RunResult:
        """Run ``code`` with the sandbox's Python (``python3 -c code``) in the work directory."""
        return self.run([python_executable(), "-c", code])

    def _collect(self, proc: subprocess.Popen) -> tuple[bytes, int, bool]:
        """Read output until the process ends or the wall clock runs out; kill the tree in any case."""
        deadline = time.monotonic() + self.limits.wall_s
        cap = self.limits.output_bytes
        kept, dropped, timed_out = bytearray(), 0, False
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                room = max(cap - len(kept), 0)
                kept += chunk[:room]
                dropped += len(chunk) - min(room, len(chunk))
        if not timed_out:
            timed_out = not _exited_unreaped(proc.pid, deadline)
        self._kill(proc)
        proc.stdout.close()
        return bytes(kept), dropped, timed_out

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """Kill the call's process group, then reap it; the PID namespace takes the rest when bwrap's
        init dies. The group is killed before the reap, while its leader's pid cannot be reused."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _exited_unreaped(pid: int, deadline: float) -> bool:
    """Wait until child ``pid`` exits, without reaping it (so its pid stays its own); False at the
    deadline."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)
