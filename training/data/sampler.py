"""The order in which an epoch goes through the patches: fixed by (seed, epoch), resumable."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Patches in an order fixed by (seed, epoch), split across ranks, resumable.

    Without `anomaly_share` an epoch is a permutation of all patches. With it, that share
    of the epoch's `size` draws comes from the patches in `anomalous` (those holding a
    contaminant) and the rest from the others, each group gone through in shuffled
    rounds (no patch drawn twice before its group has been drawn once), then mixed.
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
    ) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        flagged = set(anomalous)
        if anomaly_share is None or not flagged or len(flagged) == size:
            order = torch.randperm(size, generator=g).tolist()
        else:
            normal = [i for i in range(size) if i not in flagged]
            wanted = round(anomaly_share * size)
            drawn = _rounds(sorted(flagged), wanted, g) + _rounds(normal, size - wanted, g)
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
