"""FSDP2 for the learner ranks (``distributed.learner_sharding: fsdp2``): each rank keeps 1/M of every
parameter, gradient and optimiser state instead of all of them.

With ``ddp`` (the default) every rank holds the whole models and all-reduces the gradients once per
optimiser step (``agentrl.data_parallel``). With ``fsdp2`` the models the learner runs (the policy, a
separate critic, the frozen reference) are cut with ``torch.distributed.fsdp.fully_shard``: every
decoder layer is one unit, the rest of the model (embeddings, final norm, LM or value head) the root
unit. A unit's full parameters are gathered for its forward and again for its backward and freed
after each; its gradients are reduce-scattered, **summed** (divide factor 1), so that with every
micro-batch loss divided by the global normalisers the summed gradient is the mini-batch's, exactly as
with ddp. The optimiser (AdamW, element-wise) steps each rank's shard. What else follows:

- **Every rank runs the same passes.** A unit's gather and scatter are collectives, so every rank must
  run as many forward and backward passes per optimiser step. A rank with fewer micro-batches (or no
  row at all) of a mini-batch runs the missing ones as ``idle_pass``: a one-token forward whose output
  is multiplied by 0 (zero gradients, the same collectives). ``optim.shared_prefix`` must be 0 (it
  makes the number of forward passes depend on the rows) and ``model.critic`` separate (the shared
  head reads the policy's backbone outside the policy's own forward, which leaves the root unit's
  parameters sharded); the config says so when it loads.
- **Rank 0 keeps an unsharded copy** of the policy and the critic (``FullCopies``, taken before the
  models are cut; on the CPU unless rank 0 samples with it). After each policy update the shards are
  gathered into it (a collective on every rank): the in-process sampler reads it and Ray workers get
  its weights. Checkpoints are written from it, with the optimiser states gathered into their unsharded
  form (``full_optimizer_state``), so a checkpoint has the format of a ddp or one-process run and a run
  resumes at any rank count and with either switch (``shard_optimizer_state`` cuts a loaded state).
- Loading reads the whole checkpoint on every rank before cutting it (no meta-device start), so every
  rank needs the memory of one whole model for a moment at start.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from agentrl.data_parallel import DataParallel


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face model or of a critic on one (``model.layers``, or under
    ``.model``, ``.base_model`` or ``.backbone``); empty for a model with none."""
    for owner in (model, getattr(model, "model", None), getattr(model, "backbone", None),
                  getattr(model, "base_model", None)):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return list(layers)
    return []


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Cut ``model`` in place with ``fully_shard`` (one unit per decoder layer, the rest the root unit),
    gradients summed over the ranks; returns it."""
    # A critic returns its values as a view (``squeeze``); FSDP2 warns that an in-place op on it would
    # skip a hook. Nothing here writes into a model's output (agentrl.batch only slices and pads it).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for layer in _layers(model):
        fully_shard(layer)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum: the losses carry the global normalisers
            module.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-multiplied one)
    return model


def local(value: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor's value as a plain tensor (a gradient norm); a plain tensor as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def idle_pass(model: torch.nn.Module, device: torch.device) -> None:
    """One forward and backward pass of a sharded ``model`` on one token, its output times 0: the
    collectives of a micro-batch, with no gradient (a rank with fewer micro-batches than another)."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    tensor = out if isinstance(out, torch.Tensor) else out.logits
    (tensor.float().sum() * 0.0).backward()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a sharded ``model`` on the CPU of rank 0 (empty on the others); a
    collective every rank calls."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's ``state_dict`` with every sharded state tensor gathered whole (a collective every
    rank calls): the format of an optimiser over the unsharded parameters."""
    state = optimizer.state_dict()
    gathered = {
        index: {key: local(value).cpu() if isinstance(value, DTensor) else value
                for key, value in per.items()}
        for index, per in sorted(state["state"].items())
    }
    return {"state": gathered, "param_groups": state["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, full: dict[str, Any]) -> dict[str, Any]:
    """``full`` (an unsharded optimiser ``state_dict``, the same on every rank) with each state tensor
    of a sharded parameter cut as the parameter is, ready for ``optimizer.load_state_dict``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for index, per in full["state"].items():
        p = params[index]
        state[index] = {key: _cut_like(value, p) for key, value in per.items()}
    return {"state": state, "param_groups": full["param_groups"]}


def _cut_like(value: Any, param: torch.Tensor) -> Any:
    if not (isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape):
        return value  # Adam's step count, or a parameter that is not sharded
    value = value.to(device=param.device, dtype=param.dtype)
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


class FullCopies:
    """Rank 0's unsharded copies of the policy and the critic (None on the other ranks); see the module
    docstring. Build it before ``shard_model`` cuts the models.

    Args:
        parallel: this process's learner rank.
        policy: the policy, still whole.
        critic: the separate critic, still whole; None for GRPO.
        device: where the copies live: the policy's device when rank 0 samples from its copy, else cpu.
    """

    def __init__(self, parallel: DataParallel, policy: torch.nn.Module, critic: torch.nn.Module | None,
                 *, device: torch.device | str) -> None:
        self.parallel = parallel
        main = parallel.is_main
        self.policy = copy.deepcopy(policy).to(device).eval() if main else None
        self.critic = copy.deepcopy(critic).to(device).eval() if main and critic is not None else None

    def refresh(self, models: Iterable[tuple[torch.nn.Module | None, torch.nn.Module | None]]) -> None:
        """Gather each sharded model into its copy (every rank calls it; rank 0's copies change)."""
        for sharded, whole in models:
            if sharded is None:
                continue
            state = full_state_dict(sharded)
            if whole is not None:
                with torch.no_grad():
                    whole.load_state_dict(state)

    def refresh_policy(self, policy: torch.nn.Module) -> None:
        """The policy's copy after an update."""
        self.refresh([(policy, self.policy)])
