"""The patch set as a torch Dataset: (3, 518, 518) normalised float tensor, (518, 518) labels."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from common.imaging import normalize
from training.data.patches import PatchSet


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Wraps a PatchSet for a DataLoader.

    Items are (image, mask): image float32 (3, S, S), CLIP-normalised RGB; mask int64
    (S, S) class indices with common.classes.IGNORE_INDEX on padding.
    """

    def __init__(self, patches: PatchSet) -> None:
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.patches[index]
        image = torch.from_numpy(normalize(patch.image))
        mask = torch.from_numpy(patch.mask.astype("int64"))
        return image, mask
