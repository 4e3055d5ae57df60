"""The critic and the reference policy, both built from the policy (docs/design.md sections 6 and 8).

- ``ValueModel`` (``model.critic: separate``): a copy of the policy's backbone (the Hugging Face base
  model under the language-model head, e.g. ``Qwen2Model``) with a scalar ``Linear(hidden, 1)`` head.
  ``critic_from_policy`` deep-copies the policy's backbone weights; ``save_critic`` / ``load_critic``
  write and read it as a Hugging Face directory (the backbone's ``save_pretrained`` plus
  ``value_head.safetensors``), so a checkpoint's critic loads with transformers alone.
- ``SharedValueHead`` (``model.critic: shared``): the same head on the policy's own backbone, to halve
  memory. ``policy_and_values`` gives the policy's logits and the values from ONE forward pass; its
  parameters are the head's only (the backbone's belong to the policy and its optimiser).
- ``reference_from_policy``: a frozen deep copy of the policy, for the KL term; load it only when a KL
  term is on (``TrainConfig.needs_reference``).

Alignment (``agentrl.batch.ValueModel``): ``values[:, s]`` is the value of the state after reading
tokens 0..s, the head applied to the backbone's last hidden state at s; ``forward.critic_values`` shifts
it so that the value for token t is read at s = t - 1.

Choices that affect results:
- The head is initialised ``N(0, 1 / (hidden + 1))`` (standard deviation), bias 0, from its own seeded
  generator (the global RNG is untouched), as OpenRLHF does: small, so the first values are near 0, but
  not zero, so the backbone gets a gradient from the first update.
- The head computes in float32 (float64 for a float64 backbone) whatever the backbone's dtype, so the
  values are float32 (or float64) even for a bfloat16 backbone.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedModel

from agentrl.forward import shared_prefix_forward

VALUE_HEAD_FILE = "value_head.safetensors"


def backbone_of(policy: PreTrainedModel) -> torch.nn.Module:
    """The base model under a Hugging Face causal LM's head (``policy.model`` for Qwen2ForCausalLM)."""
    base = getattr(policy, "base_model", None)
    if not isinstance(base, torch.nn.Module) or base is policy:
        raise ValueError(f"policy: {type(policy).__name__} exposes no base model under its LM head")
    return base


def _hidden_size(backbone: torch.nn.Module) -> int:
    size = getattr(getattr(backbone, "config", None), "hidden_size", None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"backbone: {type(backbone).__name__} has no config.hidden_size")
    return size


def _head_dtype(backbone: torch.nn.Module) -> torch.dtype:
    dtype = next(backbone.parameters()).dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_value_head(
    hidden_size: int, *, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.nn.Linear:
    """A ``Linear(hidden_size, 1)``, weights ``N(0, 1 / (hidden_size + 1))`` drawn from ``seed``, bias 0."""
    head = torch.nn.Linear(hidden_size, 1, dtype=dtype, device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(head.weight.shape, generator=g, dtype=torch.float64) / (hidden_size + 1)
    with torch.no_grad():
        head.weight.copy_(weight.to(dtype))
        head.bias.zero_()
    return head


def _last_hidden(out: object) -> torch.Tensor:
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hidden = out.hidden_states[-1]  # type: ignore[attr-defined]
    return hidden


class ValueModel(torch.nn.Module):
    """A critic: a backbone of the policy's architecture and a scalar head (``model.critic: separate``).

    ``forward(input_ids, attention_mask) -> (B, T)`` values, ``out[:, s]`` the value of the state after
    tokens 0..s (``agentrl.batch.ValueModel``), float32 (float64 for a float64 backbone).
    """

    def __init__(self, backbone: PreTrainedModel, head: torch.nn.Linear) -> None:
        super().__init__()
        if head.in_features != _hidden_size(backbone) or head.out_features != 1:
            raise ValueError(f"head: expected Linear({_hidden_size(backbone)}, 1), got {head}")
        self.backbone = backbone
        self.head = head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, shared_prefix: int = 0
    ) -> torch.Tensor:
        """(B, T) values; ``shared_prefix`` as in ``forward.shared_prefix_forward``'s ``min_prefix``."""
        (hidden,) = shared_prefix_forward(self.backbone, input_ids, attention_mask, min_prefix=shared_prefix,
                                          outputs=lambda out: (_last_hidden(out),))
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, T)

    def save_pretrained(self, path: str | Path) -> Path:
        """``save_critic(self, path)``: what checkpoints call."""
        return save_critic(self, path)



def critic_from_policy(policy: PreTrainedModel, *, seed: int) -> ValueModel:
    """A separate critic: a deep copy of the policy's backbone (same weights, dtype and device) and a
    fresh head drawn from ``seed``. The policy is not modified."""
    backbone = copy.deepcopy(backbone_of(policy))
    backbone.zero_grad(set_to_none=True)
    backbone.requires_grad_(True)
    device = next(backbone.parameters()).device
    head = make_value_head(_hidden_size(backbone), seed=seed, dtype=_head_dtype(backbone), device=device)
    return ValueModel(backbone, head)


def save_critic(critic: ValueModel | SharedValueHead, path: str | Path) -> Path:
    """Write a critic to the directory ``path``: a ``ValueModel``'s backbone as a Hugging Face directory
    (``save_pretrained``) plus ``value_head.safetensors``; a ``SharedValueHead``'s head only (its backbone
    is the policy's, saved with the policy). Returns the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(critic, ValueModel):
        critic.backbone.save_pretrained(out)
    elif not isinstance(critic, SharedValueHead):
        raise ValueError(f"critic: expected a ValueModel or SharedValueHead, got {type(critic).__name__}")
    state = {k: v.detach().contiguous().cpu() for k, v in critic.head.state_dict().items()}
    save_file(state, str(out / VALUE_HEAD_FILE))
    return out


def _load_head(path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Linear:
    file = path / VALUE_HEAD_FILE
    if not file.is_file():
        raise ValueError(f"critic directory {path} has no {VALUE_HEAD_FILE}")
    state = load_file(str(file))
    head = torch.nn.Linear(state["weight"].shape[1], 1, dtype=dtype, device=device)
    head.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return head


def load_critic(path: str | Path, *, dtype: torch.dtype = torch.float32) -> ValueModel:
    """Read a ``ValueModel`` written by ``save_critic``; the backbone in ``dtype`` (the head in float32,
    or float64 for a float64 backbone)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"critic directory {p} has no config.json")
    backbone = AutoModel.from_pretrained(p, dtype=dtype)
    head = _load_head(p, _head_dtype(backbone), next(backbone.parameters()).device)
    return ValueModel(backbone, head)


class SharedValueHead(torch.nn.Module):
    """A value head on the policy's own backbone (``model.critic: shared``).

    Its parameters are the head's only; the policy is held by reference (not a submodule), so its
    weights are neither duplicated in this module's ``state_dict`` nor given to a second optimiser.

    - ``forward(input_ids, attention_mask)``: (B, T) values from a backbone-only pass (no LM head), the
      ``agentrl.batch.ValueModel`` protocol; ``detach_backbone=True`` trains the head alone.
    - ``policy_and_values(input_ids, attention_mask)``: the policy's logits and the values from one
      forward pass of the policy (its last hidden state feeds both heads).
    """

    def __init__(
        self, policy: PreTrainedModel, *, seed: int = 0, head: torch.nn.Linear | None = None
    ) -> None:
        super().__init__()
        backbone = backbone_of(policy)
        if head is None:
            device = next(policy.parameters()).device
            dtype = _head_dtype(backbone)
            head = make_value_head(_hidden_size(backbone), seed=seed, dtype=dtype, device=device)
        self.head = head
        self.__dict__["_policy"] = policy  # not registered: the policy's parameters are not ours

    @property
    def policy(self) -> PreTrainedModel:
        return self.__dict__["_policy"]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, detach_backbone: bool = False,
        shared_prefix: int = 0,
    ) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_backbone):
            (hidden,) = shared_prefix_forward(
                backbone_of(self.policy), input_ids, attention_mask, min_prefix=shared_prefix,
                outputs=lambda out: (_last_hidden(out),),
            )
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def policy_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, shared_prefix: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T, V), values (B, T))`` from one forward pass of the policy (``shared_prefix``
        as in ``agentrl.forward.shared_prefix_forward``'s ``min_prefix``)."""
        logits, hidden = shared_prefix_forward(
            self.policy, input_ids, attention_mask, min_prefix=shared_prefix,
            outputs=lambda out: (out.logits, out.hidden_states[-1]), output_hidden_states=True,
        )
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)
        return logits, values

    def save_pretrained(self, path: str | Path) -> Path:
        """``save_critic(self, path)``: the head only; the backbone is saved with the policy."""
        return save_critic(self, path)



def load_shared_value_head(path: str | Path, policy: PreTrainedModel) -> SharedValueHead:
    """Read a ``SharedValueHead``'s head written by ``save_critic`` and put it on ``policy``'s backbone."""
    backbone = backbone_of(policy)
    head = _load_head(Path(path), _head_dtype(backbone), next(policy.parameters()).device)
    return SharedValueHead(policy, head=head)


def reference_from_policy(policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of the policy for the KL term: no parameter requires grad, and it is in eval
    mode. Build it only when a KL term is on (``TrainConfig.needs_reference``)."""
    reference = copy.deepcopy(policy)
    reference.zero_grad(set_to_none=True)
    reference.requires_grad_(False)
    return reference.eval()
