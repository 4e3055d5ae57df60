"""Fixtures shared across test files: one default tiny model per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default ``tiny`` model written by ``init_model`` (seed 0), built once per session."""
    from agentrl.models import init_model

    return init_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)
