"""Checks of the tensors the advantage functions take: each names the argument at fault in a
``ValueError``, and ``work_dtype`` says which float type to compute in (half precision in float32)."""

from __future__ import annotations

import torch

__all__ = ["bool_mask", "check_episode_index", "check_shape", "check_tensor", "check_unit", "work_dtype"]


def check_tensor(name: str, x: object, dim: int, *, floating: bool | None) -> torch.Tensor:
    """Check type and number of dimensions; ``floating``: True float, False integer/bool, None any."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dim:
        raise ValueError(f"{name}: expected {dim} dimension(s), got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name}: expected an integer or bool tensor, got {x.dtype}")
    return x


def check_shape(name: str, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}: shape {tuple(x.shape)} != {what} {shape}")


def bool_mask(mask: object, dim: int = 2) -> torch.Tensor:
    """Check a 0/1 mask and return it as bool. A non-bool mask costs one host sync for the check."""
    mask = check_tensor("mask", mask, dim, floating=None)
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected only 0 and 1")
    return mask != 0


def check_episode_index(episode_index: object, n: int, num_episodes: int, what: str) -> torch.Tensor:
    """Check an (n,) integer tensor of episode numbers in [0, num_episodes) and return it as long."""
    index = check_tensor("episode_index", episode_index, 1, floating=False)
    check_shape("episode_index", index, (n,), "batch size")
    if index.dtype == torch.bool or not bool(((index >= 0) & (index < num_episodes)).all()):
        raise ValueError(f"episode_index: expected integers in [0, {num_episodes}) ({what})")
    return index.long()


def check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")


def work_dtype(*xs: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the outputs, dtype to compute in): half precision is computed in float32."""
    out = xs[0].dtype
    for x in xs[1:]:
        out = torch.promote_types(out, x.dtype)
    return out, (torch.float64 if out == torch.float64 else torch.float32)
