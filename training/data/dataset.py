"""The patch set as a torch Dataset: (3, 518, 518) normalised float tensor, (518, 518) labels."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from common.imaging import normalize
from training.config import AugmentConfig
from training.data.augment import augment
from training.data.patch_cache import PatchCache
from training.data.patches import PatchSet

PatchKey = int | tuple[int, int, int]
"""A patch index, or (patch index, epoch, position in the epoch): the form that augments."""


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Wraps a PatchSet (read through a PatchCache when one is given) for a DataLoader.

    Items are (image, mask): image float32 (3, S, S), CLIP-normalised RGB; mask int64
    (S, S) class indices with common.classes.IGNORE_INDEX on padding. With an active
    `augment` config, an item asked for by (index, epoch, position) is augmented with a
    generator seeded by (seed, epoch, position): the same draw on a resumed run, and a
    different one each time a patch comes back within an epoch. A plain index is never
    augmented (evaluation).
    """

    def __init__(
        self,
        patches: PatchSet,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: PatchCache | None = None,
    ) -> None:
        if cache is not None and len(cache) != len(patches):
            raise ValueError(f"the patch cache holds {len(cache)} patches, the set {len(patches)}")
        self.patches = patches
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed
        self.cache = cache

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, key: PatchKey) -> tuple[torch.Tensor, torch.Tensor]:
        index = key if isinstance(key, int) else key[0]
        if self.cache is not None:
            image, mask = self.cache[index]
        else:
            patch = self.patches[index]
            image, mask = patch.image, patch.mask
        if self.augment is not None and not isinstance(key, int):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, key[1], key[2]]))
            image, mask = augment(image, mask, self.augment, rng)
        return torch.from_numpy(normalize(image)), torch.from_numpy(mask.astype("int64"))
