"""Where this process stands in a data-parallel run, and what the ranks agree on.

`Ranks` is the single-process default the loop always runs with: every method is the
identity, so one process trains exactly as before. `ProcessGroupRanks` is one of N ranks
started by torchrun (see launch.py and rank_main.py): the same questions, answered by
collectives over gloo (CPU) or nccl (CUDA). The loop calls them at the same points on every
rank, so no rank waits for a collective that a peer never reaches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from ltxq.errors import TrainingError
from ltxq.trainer.device import resolve_device

# Ranks wait in collectives while rank 0 preprocesses, validates or saves a checkpoint, which
# can take long on a real model; a dead rank is torchrun's to notice, not this timeout's.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


class Ranks:
    """One process training alone: rank 0 of 1."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        """Tell whether this is rank 0, the one that writes outputs and reports."""
        return self.index == 0

    def shard(self, per_rank: int) -> slice:
        """Return this rank's slice of a global batch of PER_RANK samples per rank."""
        return slice(self.index * per_rank, (self.index + 1) * per_rank)

    def any(self, flag: bool) -> bool:
        """Return True on every rank if FLAG is True on any rank."""
        return flag

    def average(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Average PARAMS' gradients over the ranks in place; return the mean of LOSS."""
        return loss

    def from_main(self, value: int) -> int:
        """Return rank 0's VALUE on every rank."""
        return value

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (for shared caches)."""
        yield


class ProcessGroupRanks(Ranks):
    """One rank of a torchrun launch; its collectives run on DEVICE's backend."""

    def __init__(self, index: int, count: int, device: torch.device) -> None:
        self.index = index
        self.count = count
        self.device = device

    @classmethod
    def start(cls, device: torch.device) -> ProcessGroupRanks:
        """Join the process group torchrun's environment describes (RANK, WORLD_SIZE, ...)."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def close(self) -> None:
        """Leave the process group (after the last collective)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def average(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        # One flat all-reduce per optimizer step (not one per micro-batch, as DDP would do
        # under accumulation); gloo has no AVG, so sum and divide.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]
                         + [loss.detach().reshape(1).float()])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.count
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n
        return flat[-1].to(loss.dtype)

    def from_main(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main:
            dist.barrier()


def rank_device(name: str | None, local_rank: int, count: int) -> torch.device:
    """Return the device of LOCAL_RANK: cuda:LOCAL_RANK of the GPUs this process sees, or CPU.

    NAME is the device the job was given (None: CUDA if there is any).
    """
    base = resolve_device(name)
    if base.type != "cuda":
        return base
    if base.index not in (None, 0):
        raise TrainingError(f"device {name!r}: a job of {count} ranks takes GPUs 0..{count - 1} "
                            f"of those it sees; choose them with CUDA_VISIBLE_DEVICES")
    seen = torch.cuda.device_count()
    if count > seen:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        given = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise TrainingError(f"resources.processes = {count} needs {count} GPUs, this job "
                            f"sees {seen}{given}")
    return torch.device("cuda", local_rank)
