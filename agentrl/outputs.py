"""Checks of where a command will write, made before the work: a run directory, an episodes file.

A command that runs for minutes and then cannot write its result has lost the work; these checks turn
the usual causes (the path is a file, or lies under one, or is a directory where a file goes, or is not
writable) into one-line ``ValueError``s naming the option, before anything runs. They cannot foresee
everything (a disk that fills later is reported when it happens: ``agentrl.cli``). No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path


def _existing_ancestor(path: Path, field: str) -> Path:
    """The nearest part of ``path`` that exists (``path`` itself, or a parent); a ValueError when that is
    a file, since nothing can be created under a file."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise ValueError(f"{field}: {path} {where}")
    return probe


def check_writable_dir(path: str | Path, field: str) -> None:
    """ValueError naming ``field`` unless ``path`` is, or can be created as, a directory we may write to."""
    p = Path(path)
    probe = _existing_ancestor(p, field)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: {probe} is not writable")


def check_output_file(path: str | Path, field: str) -> None:
    """ValueError naming ``field`` unless a file can be written at ``path`` (not a directory, not under a
    file, in a writable directory)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{field}: {p} is a directory, not a file")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise ValueError(f"{field}: {p} is not writable")
        return
    probe = _existing_ancestor(p, field)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: {probe} is not writable")
