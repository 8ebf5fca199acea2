"""The order in which an epoch goes through the patches: fixed by (seed, epoch), resumable."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Patches in an order fixed by (seed, epoch), split across ranks, resumable.

    Without shares an epoch is a permutation of all patches. With `anomaly_share`, that
    share of the epoch's `size` draws comes from the patches in `anomalous` (those holding
    a contaminant); with `hard_share`, that share from the patches in `hard` (those
    holding a region a served model reported falsely), a patch in both counting as hard;
    the rest comes from the other patches. Each group is gone through in shuffled rounds
    (no patch drawn twice before its group has been drawn once), then all are mixed.
    `skip` leaves out the first items of this rank's share (batches already trained).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        skip: int,
        anomalous: Sequence[int] = (),
        anomaly_share: float | None = None,
        hard: Sequence[int] = (),
        hard_share: float | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        groups: list[tuple[list[int], float]] = []
        taken: set[int] = set()
        for members, share in ((hard, hard_share), (anomalous, anomaly_share)):
            group = sorted(set(members) - taken)
            if share is not None and group:
                groups.append((group, share))
                taken.update(group)
        rest = [i for i in range(size) if i not in taken]
        if not groups or not rest:
            order = torch.randperm(size, generator=g).tolist()
        else:
            drawn: list[int] = []
            for group, share in groups:
                drawn += _rounds(group, round(share * size), g)
            drawn += _rounds(rest, size - len(drawn), g)
            order = [drawn[i] for i in torch.randperm(size, generator=g).tolist()]
        share = len(order) // world  # every rank the same number of batches
        self.indices = order[rank * share : (rank + 1) * share][skip:]
        self.epoch, self.start = epoch, rank * share + skip

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def keys(self) -> list[tuple[int, int, int]]:
        """The epoch's items as (patch index, epoch, position in the epoch's whole order).

        These are the keys under which PatchDataset augments.
        """
        return [(i, self.epoch, self.start + n) for n, i in enumerate(self.indices)]

    def __len__(self) -> int:
        return len(self.indices)


def _rounds(group: list[int], count: int, g: torch.Generator) -> list[int]:
    """`count` items of `group`: whole shuffled passes over it, then part of one more."""
    out: list[int] = []
    while len(out) < count:
        out += [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
    return out[:count]
