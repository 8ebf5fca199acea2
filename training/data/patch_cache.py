"""Every patch of a PatchSet at model size in two flat uint8 files, read by memory map.

Reading a patch from its frame decodes a whole 4K image; under a shuffled order the
PatchSet's few cached frames rarely hold the next patch's frame, so training spent about
a quarter of a CPU step decoding (BENCHMARKS.md). The cache decodes each frame once,
in frame order, and afterwards a patch is a slice of a memory-mapped file that the page
cache keeps in RAM (about 1.07 MB a patch at 518 px). Several data-loader workers and
several runs on the same data share it.

A cache is valid for exactly one set of patches: its key covers each patch's frame file
(path, size, modification time), mask file or annotations, tile box and the input size.
A folder whose key differs is rebuilt; `meta.json` is written last, so a build stopped
half way is rebuilt too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.classes import NUM_CLASSES
from training.data.patches import PatchSet

_META = "meta.json"
_IMAGES = "images.u8"
_MASKS = "masks.u8"


def _stat(path: Path | None) -> str:
    if path is None:
        return "-"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(patches: PatchSet) -> str:
    """A digest of what the cached patches are made from (files, boxes, input size)."""
    h = hashlib.sha256(f"input {patches.input_size}\n".encode())
    annotations = patches.frames.root / "annotations.json"
    h.update(_stat(annotations if annotations.exists() else None).encode())
    files = [f"{_stat(f.image_path)} {_stat(f.mask_path)}" for f in patches.frames.frames]
    for ref in patches.refs:
        b = ref.tile.box
        h.update(f"{files[ref.frame]} {b.x} {b.y} {b.x1} {b.y1}\n".encode())
    return h.hexdigest()


class PatchCache:
    """Read-only view of a built cache: `cache[i]` is patch i's (image, mask) at input size."""

    def __init__(self, folder: Path, count: int, size: int) -> None:
        self.folder = folder
        shape = (count, size, size)
        self._images = np.memmap(folder / _IMAGES, np.uint8, "r", shape=(*shape, 3))
        self._masks = np.memmap(folder / _MASKS, np.uint8, "r", shape=shape)

    def __len__(self) -> int:
        return int(self._masks.shape[0])

    def __getitem__(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        return np.array(self._images[index]), np.array(self._masks[index])

    def pixel_counts(self) -> npt.NDArray[np.int64]:
        """(patches, NUM_CLASSES) labelled pixels of each class per patch (PatchSet's figures)."""
        counts = np.zeros((len(self), NUM_CLASSES), dtype=np.int64)
        for i in range(len(self)):
            counts[i] = np.bincount(self._masks[i].ravel(), minlength=256)[:NUM_CLASSES]
        return counts

    @classmethod
    def open(cls, patches: PatchSet, folder: Path, log: bool = True) -> PatchCache:
        """The cache of `patches` in `folder`, built (or rebuilt) there first if needed."""
        key, count, size = cache_key(patches), len(patches), patches.input_size
        meta = folder / _META
        try:
            if json.loads(meta.read_text()).get("key") == key:
                return cls(folder, count, size)
        except (OSError, ValueError):
            pass
        folder.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)
        if log:
            gb = count * size * size * 4 / 1e9
            print(f"patch cache: writing {count} patches ({gb:.1f} GB) to {folder}", flush=True)
        images = np.memmap(folder / _IMAGES, np.uint8, "w+", shape=(count, size, size, 3))
        masks = np.memmap(folder / _MASKS, np.uint8, "w+", shape=(count, size, size))
        for i in range(count):  # refs are in frame order: each frame is decoded once
            patch = patches[i]
            images[i], masks[i] = patch.image, patch.mask
        images.flush()
        masks.flush()
        del images, masks
        tmp = folder / f"{_META}.tmp"
        tmp.write_text(json.dumps({"key": key, "patches": count, "input_size": size}))
        os.replace(tmp, meta)
        return cls(folder, count, size)
