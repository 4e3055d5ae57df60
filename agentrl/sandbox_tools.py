"""Tools on a sandbox that any ``ToolEnv`` can use: a shell, Python, and files in the work directory.

``SandboxTools`` is a mixin: a ``ToolEnv`` subclass that lists it among its bases gets six tools,
``run_shell``, ``run_python``, ``read_file``, ``write_file``, ``patch_file`` and ``list_dir``, all
acting on ``self.sandbox`` (an ``agentrl.sandbox.Sandbox`` the environment opens in ``setup``, one per
episode, and closes when the episode ends; ``open_sandbox`` and ``close_sandbox`` do both).

Commands run inside the sandbox. The file tools run on the host but only inside the work directory:
a path is resolved (symlinks included) and refused when it leaves it. That is safe because no process
of the sandbox outlives its call, so nothing can swap a path between the check and the use.

Limits: a command's output is capped by the sandbox (``Limits.output_bytes``; the result says how
many bytes were dropped), a file read is capped at ``READ_LIMIT`` characters, and every cut is counted
in ``num_output_capped``. The ToolBox thread limit is off (``timeout_s=None``): the sandbox's own
wall-clock limit kills a command, where a thread limit could only abandon it.

This module imports no torch.
"""

from __future__ import annotations

from agentrl.sandbox import Limits, Sandbox
from agentrl.tools import tool

READ_LIMIT = 12_000  # characters of a file ``read_file`` returns
WRITE_LIMIT = 200_000  # characters ``write_file`` accepts
_OUT = 16_000  # the tools' max_output_chars: above the sandbox's cap, so the sandbox's marker shows


class SandboxTools:
    """Mixin for a ``ToolEnv``: shell, Python and file tools on ``self.sandbox``; see the module doc."""

    sandbox: Sandbox | None = None
    sandbox_limits: Limits = Limits()
    unsafe_no_sandbox: bool = False
    num_output_capped: int = 0

    def open_sandbox(self) -> Sandbox:
        """Close any previous episode's sandbox and open a fresh one (call from ``setup``)."""
        self.close_sandbox()
        self.sandbox = Sandbox(self.sandbox_limits, unsafe_no_sandbox=self.unsafe_no_sandbox)
        self.num_output_capped = 0
        return self.sandbox

    def close_sandbox(self) -> None:
        """Remove the current sandbox's work directory, if any."""
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def _open_box(self) -> Sandbox:
        if self.sandbox is None or self.sandbox.closed:
            raise RuntimeError("no sandbox is open for this episode")
        return self.sandbox

    def _shown(self, result_text: str, capped: bool) -> str:
        self.num_output_capped += capped
        return result_text

    @tool(timeout_s=None, max_output_chars=_OUT)
    def run_shell(self, command: str) -> str:
        """Run a shell command (sh -c) in the work directory of the sandbox; no network.

        Args:
            command: the command line, e.g. "python test_shapes.py".
        """
        result = self._open_box().run(["/bin/sh", "-c", command])
        return self._shown(result.describe(), result.dropped_bytes > 0)

    @tool(timeout_s=None, max_output_chars=_OUT)
    def run_python(self, code: str) -> str:
        """Run Python code in the work directory of the sandbox; no network.

        Args:
            code: the program's source.
        """
        result = self._open_box().run_python(code)
        return self._shown(result.describe(), result.dropped_bytes > 0)

    @tool(timeout_s=None, max_output_chars=_OUT)
    def read_file(self, path: str) -> str:
        """Read a text file of the work directory.

        Args:
            path: the file's path, relative to the work directory.
        """
        target = self._open_box().host_path(path)
        if not target.is_file():
            raise ValueError(f"path: no file {path!r}")
        text = target.read_text(encoding="utf-8", errors="replace")
        if len(text) <= READ_LIMIT:
            return text
        return self._shown(f"{text[:READ_LIMIT]}\n[file cut: {len(text) - READ_LIMIT} more chars]", True)

    @tool(timeout_s=None)
    def write_file(self, path: str, content: str) -> str:
        """Write a text file in the work directory, replacing it if it exists.

        Args:
            path: the file's path, relative to the work directory.
            content: the whole new text of the file.
        """
        if len(content) > WRITE_LIMIT:
            raise ValueError(f"content: at most {WRITE_LIMIT} characters, got {len(content)}")
        box = self._open_box()
        target = box.host_path(path)
        if not target.parent.is_dir():
            raise ValueError(f"path: no directory {str(target.parent.relative_to(box.path.resolve()))!r}")
        target.write_text(content, encoding="utf-8")
        box.own(target)
        return f"Wrote {len(content)} characters to {path}."

    @tool(timeout_s=None)
    def patch_file(self, path: str, old: str, new: str) -> str:
        """Replace one exact occurrence of a piece of text in a file of the work directory.

        Args:
            path: the file's path, relative to the work directory.
            old: the exact text to replace; it must occur exactly once in the file.
            new: the text to put in its place.
        """
        target = self._open_box().host_path(path)
        if not target.is_file():
            raise ValueError(f"path: no file {path!r}")
        text = target.read_text(encoding="utf-8")
        count = text.count(old) if old else 0
        if count != 1:
            raise ValueError(f"old: expected exactly one occurrence in {path}, found {count}")
        target.write_text(text.replace(old, new, 1), encoding="utf-8")
        return f"Patched {path}: replaced {len(old)} characters with {len(new)}."

    @tool(timeout_s=None, max_output_chars=_OUT)
    def list_dir(self, path: str = ".") -> str:
        """List a directory of the work directory: one entry a line, directories ending in "/".

        Args:
            path: the directory, relative to the work directory.
        """
        target = self._open_box().host_path(path)
        if not target.is_dir():
            raise ValueError(f"path: no directory {path!r}")
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        return "\n".join(names) or "(empty)"
