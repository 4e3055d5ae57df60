"""The learner's data parallelism on torch.distributed: which rows a rank updates on, and what it sums.

M ranks (``distributed.learner_ranks``; gloo on CPU, NCCL on GPU) hold the same models and the same
prepared rows (each computes its share of the rows' values and reference log-probs and ``gather``
gives all of them to every rank: ``Learner._shared``). Each mini-batch (drawn by the learner's
generator, the same on every rank) is cut by episodes into M contiguous shards; rank r computes the
loss of shard r only. What makes M ranks one update:

- **Normalisers are global.** The token-mean denominator is the policy tokens of every micro-batch of
  every rank, and the seq-mean modes' sequence count the sequences of every rank: each rank counts its
  shard and one all-reduce sums the counts (``global_count``), never a per-rank mean. The critic's
  token-mean likewise.
- **Gradients are summed.** Each rank's micro-batch losses are divided by the global denominators, so
  the sum over ranks of their gradients is the mini-batch's gradient; ``sum_gradients`` all-reduces
  them (one flat buffer per model and step) before clipping, so every rank clips the same norm and
  takes the same optimiser step. DDP's wrapper would average per backward; summing once per optimiser
  step also lets ranks hold different numbers of micro-batches (or none).
- **Metrics are merged.** Each rank's weighted sums are gathered and merged (``merge_sums``), so a logged
  ``policy/clip_frac`` is over every policy token of the mini-batch, and ``policy/loss`` is the global loss.

With ``sharding`` ``fsdp2`` (``distributed.learner_sharding``) each rank keeps a shard of the models
instead (``agentrl.fsdp``): FSDP2's reduce-scatter sums the gradients, and ``sum_gradients`` has nothing
left to do; the normalisers and metrics are summed as above.

The models therefore stay bit-for-bit equal across ranks (the same reduced gradient on each), a
checkpoint written by rank 0 is the whole state, and a run resumes at any rank count. A single process
is ``SINGLE``: every call is the identity and nothing touches torch.distributed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the learner ranks: ``rank`` of ``world``, and whether the models are
    whole on every rank (``ddp``) or sharded (``fsdp2``, ``agentrl.fsdp``)."""

    rank: int = 0
    world: int = 1
    sharding: str = "ddp"

    @property
    def fsdp(self) -> bool:
        """Whether the models are sharded over several ranks (FSDP2)."""
        return self.sharding == "fsdp2" and self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and episodes."""
        return self.rank == 0

    def shard(self, episode_ids: Sequence[int]) -> list[int]:
        """This rank's episodes of a mini-batch's ``episode_ids`` (in their order): contiguous near-equal
        runs, the earlier ranks one more; empty when there are fewer episodes than ranks."""
        size, extra = divmod(len(episode_ids), self.world)
        start = self.rank * size + min(self.rank, extra)
        return list(episode_ids[start : start + size + (self.rank < extra)])

    def global_count(self, count: int, device: torch.device) -> int:
        """``count`` summed over the ranks (one all-reduce)."""
        if self.world == 1:
            return count
        total = torch.tensor([count], dtype=torch.int64, device=device)
        dist.all_reduce(total)
        return int(total.item())

    def global_max(self, count: int, device: torch.device) -> int:
        """The largest ``count`` of any rank (one all-reduce)."""
        if self.world == 1:
            return count
        top = torch.tensor([count], dtype=torch.int64, device=device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return int(top.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled; the others pass anything, e.g. None)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (pickled), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            dist.barrier()

    def sum_(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks, in place (a 0-d or any tensor)."""
        if self.world > 1:
            dist.all_reduce(value)
        return value

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Every parameter's gradient summed over the ranks, through one flat buffer; a parameter without
        a gradient (a rank with no row) counts as zeros. With FSDP2 the reduce-scatter of the backward
        passes has summed them already: nothing to do."""
        if self.world == 1 or self.fsdp:
            return
        unique = list({id(p): p for p in params}.values())
        for p in unique:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in unique])
        dist.all_reduce(flat)
        offset = 0
        for p in unique:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def merge_sums(self, sums: dict[str, float], weights: dict[str, float]
                   ) -> tuple[dict[str, float], dict[str, float]]:
        """Weighted metric sums and their weights, added up over the ranks (keys a rank lacks count 0)."""
        if self.world == 1:
            return sums, weights
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (sums, weights))
        out_s: dict[str, float] = {}
        out_w: dict[str, float] = {}
        for s, w in gathered:
            for name in s:
                out_s[name] = out_s.get(name, 0.0) + s[name]
                out_w[name] = out_w.get(name, 0.0) + w[name]
        return out_s, out_w


SINGLE = DataParallel()


def init_from_env(backend: str, ranks: int, sharding: str = "ddp") -> DataParallel:
    """Join the process group that ``torchrun`` (or ``launch``) set up through ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``; ``SINGLE`` when ``ranks`` is 1. The world size must be
    ``ranks`` (``distributed.learner_ranks``); ``sharding`` is ``distributed.learner_sharding``."""
    if ranks == 1:
        return SINGLE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != ranks:
        raise ValueError(f"distributed.learner_ranks: {ranks}, but this process was started with "
                         f"WORLD_SIZE={world}; launch with torchrun --nproc-per-node {ranks}")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DataParallel(dist.get_rank(), dist.get_world_size(), sharding)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "OMP_NUM_THREADS" not in os.environ:  # the ranks share the machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    fn(*args, **kwargs)


def launch(ranks: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` in ``ranks`` spawned processes on this machine, each with the
    environment ``torchrun --nproc-per-node ranks`` would give it; returns when all have finished (a
    rank that fails raises here). On several machines, start the ranks with ``torchrun`` instead."""
    import torch.multiprocessing as mp

    port = _free_port()
    try:
        mp.start_processes(_rank_entry, args=(ranks, port, fn, args, kwargs), nprocs=ranks, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as err:
        raise _expected(err) or err from None


def _expected(err: Exception) -> Exception | None:
    """A rank's ValueError (a bad config, a run directory in use) as the same one-line ValueError here;
    None for anything else, whose traceback the rank printed."""
    lines = str(err).strip().splitlines()
    last = lines[-1] if lines else ""
    if last.startswith(("ValueError: ", "agentrl.config.ConfigError: ")):
        return ValueError(last.split(": ", 1)[1])
    return None


def needs_launch(ranks: int) -> bool:
    """Whether a run of ``ranks`` learner ranks must start them (none was started by torchrun)."""
    return ranks > 1 and "WORLD_SIZE" not in os.environ
