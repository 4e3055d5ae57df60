"""The one place that knows how transformers names a model's KV cache, across the supported versions.

Older transformers releases (5.16 to at least 5.19, what vLLM 0.32 and 0.33 pin) call the cache argument
of a model's ``forward``, and the field of its output, ``past_key_values``; newer ones (5.24) call both
``cache``. An unknown keyword goes into ``**kwargs`` and is
ignored without a word, so the name is read from the model's own ``forward`` signature, never guessed.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

NEW, OLD = "cache", "past_key_values"


@lru_cache(maxsize=64)
def _name_for(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters  # type: ignore[attr-defined]
    return OLD if OLD in params and NEW not in params else NEW


def cache_name(model: Any) -> str:
    """``"cache"`` or ``"past_key_values"``: the keyword ``model``'s forward takes its KV cache by.
    Callables without a ``forward`` (test doubles, lambdas) get the current name."""
    owner = type(model)
    return _name_for(owner) if hasattr(owner, "forward") else NEW


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass to ``model(...)``."""
    return {cache_name(model): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned, whichever field holds it."""
    cache = getattr(out, NEW, None)
    return cache if cache is not None else getattr(out, OLD, None)
