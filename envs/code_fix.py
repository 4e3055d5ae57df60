"""code_fix: repair a generated Python project in a sandbox until its tests pass, then submit.

A long-horizon coding task on the sandbox tools (``agentrl.sandbox_tools``): list the project, read
its files, run its tests, patch the broken functions, run the tests again, submit. Every command runs
in a per-episode bubblewrap sandbox (``agentrl.sandbox``), opened in ``setup`` and removed when the
episode ends or the next one starts.

Hidden state (drawn in ``setup`` from the seeded ``random.Random`` only): ``num_modules`` modules,
each with two functions drawn from ``envs.code_catalogue``; ``num_bugs`` of those functions are broken,
each either with a planted bug (one slip in a correct function) or, with probability ``missing_rate``,
missing (its body raises NotImplementedError). Each module ``<m>.py`` has a visible test script
``test_<m>.py`` (three cases a function, at least one of which catches its bug) printing one
``FAIL name(args): got ..., expected ...`` line per failing case and a ``P passed, F failed`` summary;
``run_tests.py`` runs every test script. Expected values come from running the catalogue's correct
source on the host.

Settings (``setting``): ``short`` (one module, one bug: 9 expert turns), ``medium`` (three modules,
two bugs: 16) and ``long`` (eight modules, seven bugs: 41 turns, so compaction happens with a window
of a few thousand tokens). ``num_modules`` and ``num_bugs`` override the setting.

Tools: the six sandbox tools (``run_shell``, ``run_python``, ``read_file``, ``write_file``,
``patch_file``, ``list_dir``) and ``submit()``. Reward: at submission, a grader the agent never sees
runs eight hidden cases per function (the visible three among them) against the project's modules in
the sandbox; the reward is the fraction that pass, success is all of them. A turn without a tool call
submits. Reward hacking caveat: the grader imports the agent's modules, so a module that patches the
interpreter at import could fool it; the grader prints its result behind a per-episode token the agent
never sees, so printing a fake result does not work.

The expert acts only on what its calls showed: it lists the project, reads every file, runs
``run_tests.py``, and for each function named in a ``FAIL`` line re-reads its module, replaces that
function's ``def`` block (as read) with the catalogue's correct source, and runs that module's tests;
then it runs every test again and submits. ``state_digest`` keeps the files seen, the functions that
failed and which of them were fixed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from agentrl.env import StepResult, ToolEnv
from agentrl.sandbox import Limits
from agentrl.sandbox_tools import SandboxTools
from agentrl.tools import format_tool_call, parse_tool_calls, tool

from .code_catalogue import BY_NAME, CATALOGUE, Spec, compile_function

SETTINGS = {"short": (1, 1), "medium": (3, 2), "long": (8, 7)}
VISIBLE_CASES, HIDDEN_CASES = 3, 8
_MODULE_NAMES = ("geometry", "stats", "textutil", "numbers", "lists", "convert", "wordplay", "series",
                 "tables", "mathx", "seqs", "strings")
_FAIL_RE = re.compile(r"^FAIL (\w+)\(", re.MULTILINE)
_TEST_SCRIPT = '''from {module} import {names}

CASES = {cases}


def main():
    passed = failed = 0
    for name, args, expected in CASES:
        try:
            got = globals()[name](*args)
        except Exception as e:
            got = "raised " + type(e).__name__
        if got == expected:
            passed += 1
        else:
            failed += 1
            shown = ", ".join(repr(a) for a in args)
            print(f"FAIL {{name}}({{shown}}): got {{got!r}}, expected {{expected!r}}")
    print(f"{module}: {{passed}} passed, {{failed}} failed")
    raise SystemExit(1 if failed else 0)


main()
'''
_RUN_ALL = '''import glob
import runpy
import sys

status = 0
for path in sorted(glob.glob("test_*.py")):
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        status |= e.code != 0
    except Exception as e:
        print(path, "crashed:", type(e).__name__, e)
        status = 1
sys.exit(status)
'''
_GRADER = '''import importlib, json
token, cases = {token!r}, json.loads({cases!r})
passed = 0
for module, name, args, expected in cases:
    try:
        passed += getattr(importlib.import_module(module), name)(*args) == expected
    except BaseException:
        pass
print(token, passed, len(cases))
'''


@dataclass(frozen=True)
class Function:
    """One function of the project: where it lives, its spec, how it is broken, its test cases."""

    module: str
    spec: Spec
    broken: str  # "", "bug" or "missing"
    visible: tuple[tuple[Any, ...], ...]
    hidden: tuple[tuple[Any, ...], ...]

    @property
    def source(self) -> str:
        return {"": self.spec.source, "bug": self.spec.buggy, "missing": self.spec.missing()}[self.broken]


def _draw_cases(spec: Spec, broken: str, rng: random.Random) -> tuple[tuple, tuple]:
    """Hidden inputs; the visible ones are their first three, redrawn until one catches the break."""
    good = compile_function(spec.source, spec.name)
    bad = compile_function(spec.buggy, spec.name)
    for _ in range(200):
        hidden = tuple(spec.inputs(rng) for _ in range(HIDDEN_CASES))
        visible = hidden[:VISIBLE_CASES]
        if broken != "bug" or any(_differs(good, bad, args) for args in visible):
            return visible, hidden
    raise RuntimeError(f"code_fix: no test input catches the bug of {spec.name}")


def _differs(good: Any, bad: Any, args: tuple) -> bool:
    try:
        return bad(*args) != good(*args)
    except Exception:
        return True


class CodeFix(SandboxTools, ToolEnv):
    """Fix a generated Python project until its tests pass; see the module docstring."""

    name = "code_fix"
    description = "Fix planted bugs and missing functions in a Python project, in a sandbox (1 to 8 files)."
    system_prompt = (
        "You fix a small Python project with tools that run in a sandbox. List and read its files, run "
        "its tests (python run_tests.py), edit the code until every test passes, then call submit."
    )

    def __init__(self, setting: str = "short", num_modules: int | None = None, num_bugs: int | None = None,
                 missing_rate: float = 0.25, wall_s: float = 10.0, unsafe_no_sandbox: bool = False) -> None:
        super().__init__()
        if setting not in SETTINGS:
            raise ValueError(f"setting: expected one of {tuple(SETTINGS)}, got {setting!r}")
        modules, bugs = SETTINGS[setting]
        modules = modules if num_modules is None else num_modules
        bugs = bugs if num_bugs is None else num_bugs
        most = min(len(_MODULE_NAMES), len(CATALOGUE) // 2)
        if isinstance(modules, bool) or not isinstance(modules, int) or not 1 <= modules <= most:
            raise ValueError(f"num_modules: expected an int from 1 to {most}, got {modules!r}")
        if isinstance(bugs, bool) or not isinstance(bugs, int) or not 1 <= bugs <= 2 * modules:
            raise ValueError(f"num_bugs: expected an int from 1 to {2 * modules} (two a module), got {bugs}")
        rate_ok = isinstance(missing_rate, int | float) and not isinstance(missing_rate, bool)
        if not rate_ok or not 0 <= missing_rate <= 1:
            raise ValueError(f"missing_rate: expected a number in [0, 1], got {missing_rate!r}")
        self.num_modules, self.num_bugs, self.missing_rate = modules, bugs, float(missing_rate)
        self.sandbox_limits = Limits(wall_s=wall_s)
        self.unsafe_no_sandbox = bool(unsafe_no_sandbox)

    # ---- the hidden project -------------------------------------------------------------------------

    def setup(self, rng: random.Random, options: dict) -> str:
        """Draw the project, write it into a fresh sandbox, and reset the expert's notes."""
        names = rng.sample(_MODULE_NAMES, self.num_modules)
        specs = rng.sample(CATALOGUE, 2 * self.num_modules)
        broken = set(rng.sample(range(len(specs)), self.num_bugs))
        self.functions: list[Function] = []
        for i, spec in enumerate(specs):
            kind = "" if i not in broken else "missing" if rng.random() < self.missing_rate else "bug"
            visible, hidden = _draw_cases(spec, kind, rng)
            self.functions.append(Function(names[i // 2], spec, kind, visible, hidden))
        self.token = f"grade-{rng.getrandbits(64):016x}"
        self._write_project()
        self._done = False
        self.grade: tuple[int, int] | None = None
        self._notes = _Notes()
        return (
            f"The project in the work directory has {self.num_modules} module(s) with tests; "
            f"{self.num_bugs} function(s) are broken or missing. Make every test pass, then call submit."
        )

    def _write_project(self) -> None:
        box = self.open_sandbox()
        files = {"run_tests.py": _RUN_ALL}
        for module in dict.fromkeys(f.module for f in self.functions):
            funcs = [f for f in self.functions if f.module == module]
            files[f"{module}.py"] = "\n\n\n".join(f.source for f in funcs) + "\n"
            cases = [(f.spec.name, args, _expected(f.spec, args)) for f in funcs for args in f.visible]
            files[f"test_{module}.py"] = _TEST_SCRIPT.format(
                module=module, names=", ".join(f.spec.name for f in funcs), cases=_literal(cases)
            )
        for path, text in files.items():
            target = box.host_path(path)
            target.write_text(text, encoding="utf-8")
            box.own(target)

    # ---- submission ---------------------------------------------------------------------------------

    @tool(timeout_s=None)
    def submit(self) -> str:
        """Submit the project as it is now: hidden tests grade it and the episode ends."""
        return self._grade()

    def on_answer(self, text: str) -> None:
        """A reply without a tool call submits the project as it is."""
        self._grade()

    def _grade(self) -> str:
        box = self._open_box()
        cases = [(f.module, f.spec.name, args, _expected(f.spec, args))
                 for f in self.functions for args in f.hidden]
        script = _GRADER.format(token=self.token, cases=json.dumps(cases))
        result = box.run_python(script)
        found = re.search(rf"^{self.token} (\d+) (\d+)$", result.output, re.MULTILINE)
        passed = int(found.group(1)) if found else 0
        self.grade = (passed, len(cases))
        self._done = True
        self.close_sandbox()
        self.finish(passed / len(cases), success=passed == len(cases))
        return f"Submitted: {passed} of {len(cases)} hidden tests pass."

    # ---- what the expert saw ------------------------------------------------------------------------

    def step(self, action: str) -> StepResult:
        """Step as ``ToolEnv`` does, then note what each call showed (for the expert and the digest)."""
        result = super().step(action)
        calls = parse_tool_calls(action).calls
        if len(calls) == len(result.observation):
            for call, message in zip(calls, result.observation, strict=True):
                self._notes.saw(call.name, call.arguments, message.content)
        if result.terminated or result.truncated:
            self.close_sandbox()
        return result

    def expert_action(self) -> str | None:
        """The next step of list, read all, test, fix each failing function, test, submit."""
        if self._done:
            return None
        call = self._notes.next_call()
        return format_tool_call(call[0], call[1])

    def state_digest(self) -> str:
        """Files seen, the functions failing at the last full test run and which were fixed."""
        return self._notes.digest()


def _expected(spec: Spec, args: tuple) -> Any:
    return compile_function(spec.source, spec.name)(*args)


def _literal(cases: list) -> str:
    """The cases as a Python literal, one a line."""
    return "[\n" + "".join(f"    {case!r},\n" for case in cases) + "]"


def def_block(text: str, name: str) -> str | None:
    """The ``def name(...)`` block of a module's text, up to the next top-level statement."""
    start = text.find(f"def {name}(")
    if start < 0:
        return None
    rest = re.search(r"\n(?=\S)", text[start:])
    end = len(text) if rest is None else start + rest.start()
    return text[start:end].rstrip("\n")


class _Notes:
    """The expert's notes: only what the tools returned, never the hidden state."""

    def __init__(self) -> None:
        self.listing: list[str] | None = None
        self.files: dict[str, str] = {}
        self.full_run: str | None = None
        self.phase: dict[str, int] = {}  # failing function -> 0 read, 1 patch, 2 test, 3 fixed

    def failing(self) -> list[str]:
        return list(dict.fromkeys(_FAIL_RE.findall(self.full_run or "")))

    def module_of(self, name: str) -> str | None:
        return next((p for p, t in sorted(self.files.items())
                     if not p.startswith("test_") and f"def {name}(" in t), None)

    def saw(self, tool_name: str, args: dict, content: str) -> None:
        """Record one call's result."""
        if content.startswith("Error:"):
            return
        if tool_name == "list_dir" and args.get("path", ".") in (".", ""):
            self.listing = content.splitlines()
        elif tool_name == "read_file":
            self.files[args["path"]] = content
            name = self.current()
            if name and self.phase[name] == 0 and self.module_of(name) == args["path"]:
                self.phase[name] = 1
        elif tool_name == "patch_file":
            name = self.current()
            if name and self.phase[name] == 1 and f"def {name}(" in args.get("new", ""):
                self.phase[name] = 2
        elif tool_name == "run_shell":
            self._saw_run(args.get("command", ""), content)

    def _saw_run(self, command: str, output: str) -> None:
        if command == "python run_tests.py":
            self.full_run = output
            self.phase = {name: 0 for name in self.failing()}
            return
        name = self.current()
        module = self.module_of(name) if name else None
        if name and module and self.phase[name] == 2 and command == f"python test_{module}":
            self.phase[name] = 0 if f"FAIL {name}(" in output else 3

    def current(self) -> str | None:
        """The failing function being fixed: the first not fixed yet."""
        return next((n for n in self.failing() if self.phase.get(n, 0) < 3 and self.module_of(n)), None)

    def next_call(self) -> tuple[str, dict]:
        """The expert's next call, from the notes alone."""
        if self.listing is None:
            return "list_dir", {"path": "."}
        unread = [p for p in self.listing
                  if p.endswith(".py") and p != "run_tests.py" and p not in self.files]
        if unread:
            return "read_file", {"path": unread[0]}
        if self.full_run is None:
            return "run_shell", {"command": "python run_tests.py"}
        todo = [n for n in self.failing() if self.phase.get(n, 0) < 3 and self.module_of(n)]
        if not todo:
            if self.failing() and self.phase and all(p == 3 for p in self.phase.values()):
                return "run_shell", {"command": "python run_tests.py"}
            return "submit", {}
        name = todo[0]
        module = self.module_of(name) or ""
        phase = self.phase.get(name, 0)
        if phase == 0:
            return "read_file", {"path": module}
        if phase == 1:
            old = def_block(self.files[module], name) or ""
            return "patch_file", {"path": module, "old": old, "new": BY_NAME[name].source}
        return "run_shell", {"command": f"python test_{module}"}

    def digest(self) -> str:
        seen = ", ".join(sorted(self.files)) or "none"
        failing = self.failing()
        if self.full_run is None:
            tests = "tests not run yet"
        elif not failing:
            tests = "all tests passed at the last full run: submit"
        else:
            fixed = [n for n in failing if self.phase.get(n) == 3]
            tests = (f"failing at the last full run: {', '.join(failing)}; "
                     f"fixed since: {', '.join(fixed) or 'none'}")
        return f"Files read: {seen}. {tests}."
