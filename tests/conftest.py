"""Fixtures shared across test files: one default tiny model per test session, and one torch thread."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads per
    process oversubscribe the cores (a forward pass then takes 100x longer); one keeps the suite steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default ``tiny`` model written by ``init_model`` (seed 0), built once per session."""
    from agentrl.models import init_model

    return init_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)
