"""Where a training process runs: its rank in a torchrun job and its device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(slots=True)
class Distributed:
    """The place of this process in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def pick_device(choice: str) -> str:
    """The device for a --device choice: cuda when asked, or auto and one is present."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def setup_distributed(device: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = pick_device(device) == "cuda"
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, dev)
