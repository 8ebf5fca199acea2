import os

import numpy as np
import pytest
import torch

from training.config import AugmentConfig, ConfigError, parse_config
from training.data import PatchSet, load_frames
from training.data.augment import augment
from training.data.dataset import PatchDataset
from training.data.patch_cache import PatchCache

ALL = AugmentConfig(symmetries=True, brightness=0.3, contrast=0.3, blur=0.5, jpeg=0.5)


@pytest.fixture(scope="module")
def patches(synth_dir):
    return PatchSet(load_frames(synth_dir))


def _patch(seed=0, size=64):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[5:20, 40:50] = 2  # an off-centre object, so every symmetry moves it
    return image, mask


def test_default_config_changes_nothing():
    image, mask = _patch()
    assert not AugmentConfig().active
    out_image, out_mask = augment(image, mask, AugmentConfig(), np.random.default_rng(1))
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)


def test_symmetries_move_image_and_mask_together():
    image, mask = _patch()
    image[mask == 2] = 255  # the object is white in the image
    cfg = AugmentConfig(symmetries=True)
    seen = set()
    for seed in range(40):
        out_image, out_mask = augment(image, mask, cfg, np.random.default_rng(seed))
        assert (out_image[out_mask == 2] == 255).all()
        assert out_mask.sum() == mask.sum()
        seen.add(out_mask.tobytes())
    assert len(seen) == 8  # the eight symmetries of the square, each drawn


def test_photometric_changes_leave_the_mask_and_stay_in_range():
    image, mask = _patch()
    cfg = AugmentConfig(brightness=0.4, contrast=0.4, blur=1.0, jpeg=1.0, jpeg_quality=(30, 40))
    out_image, out_mask = augment(image, mask, cfg, np.random.default_rng(3))
    assert np.array_equal(out_mask, mask)
    assert out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert not np.array_equal(out_image, image)
    # blur and JPEG at low quality take away most of the random image's fine detail
    assert (
        np.abs(np.diff(out_image.astype(int), axis=1)).mean()
        < np.abs(np.diff(image.astype(int), axis=1)).mean() / 2
    )


def test_brightness_moves_the_mean_within_its_bound():
    image = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    means = [
        augment(image, mask, AugmentConfig(brightness=0.2), np.random.default_rng(s))[0].mean()
        for s in range(50)
    ]
    assert 80 - 0.5 <= min(means) < 90 and 110 < max(means) <= 120 + 0.5


def test_same_seed_same_draw():
    image, mask = _patch()
    a = augment(image, mask, ALL, np.random.default_rng(9))
    b = augment(image, mask, ALL, np.random.default_rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_augment_settings_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"augment": {"blur": 1.5, "jpeg_quality": [90, 50], "flips": True}}})
    text = str(err.value)
    assert "data.augment.blur" in text
    assert "data.augment.jpeg_quality" in text and "[lowest, highest]" in text
    assert "data.augment.flips: unknown field" in text


def test_dataset_augments_keyed_items_only(patches):
    plain = PatchDataset(patches)
    dataset = PatchDataset(patches, ALL, seed=5)
    index = next(i for i in range(len(patches)) if patches[i].mask.any())
    assert torch.equal(dataset[index][0], plain[index][0])  # a bare index: evaluation
    first, again = dataset[(index, 0, 7)], dataset[(index, 0, 7)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = dataset[(index, 0, 8)]  # the same patch drawn again later in the epoch
    assert not torch.equal(first[0], other[0])
    assert torch.equal(first[1].sort().values, plain[index][1].sort().values)  # labels kept


def test_patch_cache_gives_the_patches_and_is_reused(patches, tmp_path):
    folder = tmp_path / "cache"
    cache = PatchCache.open(patches, folder, log=False)
    assert len(cache) == len(patches)
    for i in (0, len(patches) // 2, len(patches) - 1):
        image, mask = cache[i]
        assert np.array_equal(image, patches[i].image) and np.array_equal(mask, patches[i].mask)
    assert torch.equal(PatchDataset(patches, cache=cache)[3][0], PatchDataset(patches)[3][0])
    assert np.array_equal(cache.pixel_counts(), patches.pixel_counts())
    stamp = (folder / "images.u8").stat().st_mtime_ns
    PatchCache.open(patches, folder, log=False)
    assert (folder / "images.u8").stat().st_mtime_ns == stamp  # valid: not written again


def test_patch_cache_is_rebuilt_when_the_data_or_the_build_changed(synth_dir, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(synth_dir, data)
    patches = PatchSet(load_frames(data))
    folder = tmp_path / "cache"
    PatchCache.open(patches, folder, log=False)
    frame = patches.frames.frames[0]
    os.utime(frame.image_path, ns=(1, 1))  # the file changed (a new time is enough)
    patches = PatchSet(load_frames(data))
    (folder / "images.u8").write_bytes(b"")  # and a stale cache would no longer open
    cache = PatchCache.open(patches, folder, log=False)
    assert np.array_equal(cache[0][0], patches[0].image)
    (folder / "meta.json").write_text("{half")  # a build stopped half way
    cache = PatchCache.open(patches, folder, log=False)
    assert np.array_equal(cache[len(cache) - 1][1], patches[len(patches) - 1].mask)


def test_dataset_refuses_a_cache_of_other_patches(patches, tmp_path):
    cache = PatchCache.open(patches, tmp_path / "c", log=False)
    fewer = PatchSet(load_frames(patches.frames.root), min_bed_fraction=0.9)
    assert len(fewer) != len(patches)
    with pytest.raises(ValueError, match="patch cache holds"):
        PatchDataset(fewer, cache=cache)
