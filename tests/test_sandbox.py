"""The sandbox and its tools: each escape or abuse attempt runs as model-written code through a tool.

docs/sandbox.md has the table of these attempts and what happens. Skipped, with the reason, where
bubblewrap is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agentrl.env import ToolEnv
from agentrl.sandbox import PREFIX, Limits, Sandbox, SandboxUnavailable, bwrap_path
from agentrl.sandbox_tools import SandboxTools
from agentrl.tools import format_tool_call

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed")

FAST = Limits(wall_s=3.0, cpu_s=2, memory_mb=512, processes=32, file_mb=4, output_bytes=4000)


class Box(SandboxTools, ToolEnv):
    """The smallest environment on the sandbox tools: an episode is a sandbox, ``done`` ends it."""

    name = "sandbox_box"
    system_prompt = "Use the tools."
    sandbox_limits = FAST

    def setup(self, rng, options):  # noqa: ANN001, ANN201 - a test double
        self.open_sandbox()
        return "go"

    def call(self, name: str, **arguments: object) -> str:
        """One model-written tool call; its single observation's text."""
        result = self.step(format_tool_call(name, arguments))
        assert len(result.observation) == 1
        return result.observation[0].content


@pytest.fixture
def box():
    env = Box()
    env.reset(seed=0)
    yield env
    env.close_sandbox()


def sandbox_processes(uid: int, wait_s: float = 2.0) -> list[int]:
    """Host pids whose real uid is ``uid`` (a sandbox's processes), once the kernel has had up to
    ``wait_s`` to finish tearing a killed PID namespace down (it does that asynchronously)."""
    deadline = time.monotonic() + wait_s
    while (pids := _processes(uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _processes(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            line = next(x for x in status.splitlines() if x.startswith("Uid:"))
            if int(line.split()[1]) == uid:
                pids.append(int(entry.name))
    return pids


# ---- the tools work -----------------------------------------------------------------------------


def test_tools_run_code_and_edit_files_in_the_work_directory(box):
    assert box.call("write_file", path="a.py", content="print(6 * 7)\n").startswith("Wrote")
    assert "42\n[exit code 0]" in box.call("run_shell", command="python a.py")
    assert box.call("patch_file", path="a.py", old="6 * 7", new="6 * 8").startswith("Patched")
    assert box.call("read_file", path="a.py") == "print(6 * 8)\n"
    assert "48" in box.call("run_python", code="import runpy; runpy.run_path('a.py')")
    assert box.call("run_shell", command="mkdir d && touch d/x && pwd").startswith("/work")
    assert box.call("list_dir") == "a.py\nd/"
    assert box.call("list_dir", path="d") == "x"
    assert "exit code 3" in box.call("run_shell", command="exit 3")
    error = box.call("patch_file", path="a.py", old="absent", new="x")
    assert error.startswith("Error:") and "found 0" in error


def test_file_tools_refuse_paths_outside_the_work_directory(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    for path in (str(secret), "../" * 8 + str(secret).lstrip("/"), "/etc/passwd"):
        assert "outside the work directory" in box.call("read_file", path=path)
    box.call("run_shell", command=f"ln -s {secret} link")  # a planted symlink pointing out
    assert "outside the work directory" in box.call("read_file", path="link")
    assert "outside the work directory" in box.call("write_file", path="link", content="x")
    assert secret.read_text() == "host secret"


def test_missing_bwrap_refuses_with_one_line_naming_the_package(monkeypatch):
    monkeypatch.setattr("agentrl.sandbox.bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox()
    assert "bubblewrap" in str(info.value) and "\n" not in str(info.value)
    with Sandbox(FAST, unsafe_no_sandbox=True) as unsafe:  # the loud opt-in runs on the host
        assert unsafe.run_python("print('host')").output == "host\n"


# ---- escape and abuse attempts --------------------------------------------------------------------


def test_reading_a_host_secret_fails(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    out = box.call("run_python", code=f"print(open({str(secret)!r}).read())")
    assert "FileNotFoundError" in out and "host secret" not in out
    out = box.call("run_shell", command=f"cat {secret}; ls /root /home; cat /etc/passwd")
    assert "host secret" not in out and "root:x" not in out


def test_writing_outside_the_work_directory_fails(box, tmp_path):
    target = tmp_path / "planted.txt"
    out = box.call("run_python", code=f"open({str(target)!r}, 'w').write('x')")
    assert "Error" in out or "exit code 1" in out
    assert not target.exists()
    out = box.call("run_shell", command="touch /usr/planted; echo x > /planted; touch /tmp/ok && echo tmp-ok")
    assert "tmp-ok" in out  # /tmp is a private, empty tmpfs
    assert not Path("/usr/planted").exists() and not Path("/planted").exists()


def test_reaching_a_server_on_localhost_fails(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
    out = box.call("run_python", code=code)
    with pytest.raises(TimeoutError):  # nothing ever arrived at the server
        server.accept()
    server.close()
    assert "connected" not in out and "ConnectionRefusedError" in out


def test_a_fork_bomb_is_contained_and_leaves_nothing(box):
    start = time.monotonic()
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    out = box.call("run_python", code=code)
    assert "killed" in out and time.monotonic() - start < FAST.wall_s + 2  # wall clock or CPU limit
    assert sandbox_processes(box.sandbox.uid) == []
    assert "[exit code 0]" in box.call("run_shell", command="echo alive")


def test_a_memory_bomb_gets_memory_error(box):
    out = box.call("run_python", code="x = bytearray(8 * 1024 ** 3)")
    assert "MemoryError" in out
    out = box.call("run_python", code="xs = []\nwhile True:\n    xs.append(bytearray(10 ** 7))")
    assert "MemoryError" in out


def test_an_infinite_loop_is_killed_at_the_limit(box):
    start = time.monotonic()
    out = box.call("run_shell", command="while true; do :; done")
    # the CPU-time limit (2 s, SIGXCPU) or the wall clock (3 s), whichever the busy machine hits first
    assert "killed" in out and time.monotonic() - start < FAST.wall_s + 2
    assert box.sandbox.num_timeouts == 1 or "SIGXCPU (the CPU-time limit)" in out


def test_100_mb_of_output_is_capped_and_the_cap_recorded(box):
    out = box.call("run_python", code="import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2 ** 20)")
    assert len(out) < FAST.output_bytes + 200
    dropped = 100 * 2**20 - FAST.output_bytes
    assert f"[output cut: {dropped} more bytes dropped]" in out
    assert box.num_output_capped == 1 and box.sandbox.num_capped == 1
    out = box.call("run_shell", command="head -c 100000000 /dev/zero > big; ls -l big")
    assert os.path.getsize(box.sandbox.path / "big") <= FAST.file_mb * 2**20  # RLIMIT_FSIZE


def test_killing_the_parent_process_fails(box):
    host_pid = os.getpid()
    code = (
        f"import os, signal\nfor pid in ({host_pid}, os.getppid(), 1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n        print('sent', pid)\n"
        "    except OSError as e:\n        print(pid, type(e).__name__)\n"
    )
    out = box.call("run_python", code=code)
    assert f"{host_pid} ProcessLookupError" in out  # the host's pids are not even visible
    assert "[exit code" in out  # the call itself returned normally; this process is alive
    assert "[exit code 0]" in box.call("run_shell", command="echo still here")


def test_a_background_process_does_not_outlive_its_call_or_the_episode(box):
    out = box.call("run_shell", command="(sleep 300 &) ; nohup sleep 300 > /dev/null 2>&1 & echo started")
    assert "started" in out
    assert sandbox_processes(box.sandbox.uid) == []
    path = box.sandbox.path
    box.close_sandbox()
    assert not path.exists()


def test_many_sandboxes_at_once_leave_no_process_or_directory(tmp_path):
    before = set(Path(tempfile.gettempdir()).glob(f"{PREFIX}{os.getpid()}-*"))
    uids: list[int] = []

    def episode(i: int) -> None:
        env = Box()
        env.reset(seed=i)
        uids.append(env.sandbox.uid)
        env.call("write_file", path="n.txt", content=str(i))
        assert env.call("run_shell", command="sleep 30 & cat n.txt").startswith(str(i))  # no shared state
        if i % 2:
            env.close_sandbox()  # the other half is dropped mid-episode: garbage collection cleans up

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import gc

    gc.collect()
    assert len(set(uids)) == 12
    assert set(Path(tempfile.gettempdir()).glob(f"{PREFIX}{os.getpid()}-*")) == before
    assert all(sandbox_processes(uid) == [] for uid in uids)


def test_a_killed_run_leaves_its_directory_to_the_next_sandbox():
    import signal
    import subprocess
    import sys

    code = ("import sys, time\nfrom agentrl.sandbox import Sandbox\nbox = Sandbox()\n"
            "print(box.root, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    root = Path(child.stdout.readline().strip())
    assert root.is_dir()
    child.send_signal(signal.SIGKILL)  # no finaliser, no atexit: the directory stays behind
    child.wait()
    child.stdout.close()
    assert root.is_dir()
    with Sandbox(FAST):
        assert not root.exists()  # the next sandbox on the machine removes it
