import shutil

import cv2
import numpy as np
import pytest
import torch

from common.classes import IGNORE_INDEX
from common.imaging import CLIP_MEAN, CLIP_STD, PAD_RGB
from training.data import PatchSet, load_frames
from training.data.dataset import PatchDataset


@pytest.fixture(scope="module")
def patches(synth_dir):
    return PatchSet(load_frames(synth_dir))


def test_patches_cover_each_bed_and_only_the_bed(patches):
    frames = patches.frames.frames
    assert {r.frame for r in patches.refs} == set(range(len(frames)))
    for ref in patches.refs:
        bed = frames[ref.frame].bed_box()
        b = ref.tile.box
        assert bed.x <= b.x and b.x1 <= bed.x1 and bed.y <= b.y and b.y1 <= bed.y1
        assert ref.bed_fraction >= 0.25


def test_patch_is_the_resized_tile_of_the_frame(patches):
    ref_index = next(i for i, r in enumerate(patches.refs) if r.frame == 2)
    patch = patches[ref_index]
    frame = patches.frames.frames[2]
    b = patch.ref.tile.box
    tile = np.empty((512, 512, 3), np.uint8)
    tile[:] = PAD_RGB  # beds at 1280x720 can be lower than a tile
    tile[: b.height, : b.width] = frame.load_image()[b.slices()]
    expected = cv2.resize(tile, (518, 518), interpolation=cv2.INTER_CUBIC)
    assert patch.image.shape == (518, 518, 3) and patch.image.dtype == np.uint8
    assert np.array_equal(patch.image, expected)
    tile_mask = np.full((512, 512), IGNORE_INDEX, np.uint8)
    tile_mask[: b.height, : b.width] = frame.load_mask()[b.slices()]
    expected_mask = cv2.resize(tile_mask, (518, 518), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(patch.mask, expected_mask)


def test_class_stats_count_every_labelled_pixel(patches):
    stats = patches.class_stats()
    assert stats.total_patches == len(patches)
    recount = np.zeros(4, np.int64)
    ignored = 0
    for i in range(len(patches)):
        counts = np.bincount(patches[i].mask.ravel(), minlength=256)
        recount += counts[:4]
        ignored += counts[IGNORE_INDEX]
    assert tuple(recount) == stats.pixels
    assert sum(stats.pixels) + ignored == len(patches) * 518 * 518
    assert stats.pixels[1] + stats.pixels[2] + stats.pixels[3] > 0
    assert stats.patches[0] + sum(
        1 for i in range(len(patches)) if np.isin(patches[i].mask, (1, 2, 3)).any()
    ) == len(patches)
    assert "spray_can" in stats.table()


def test_a_patch_holds_a_box_when_half_of_the_box_lies_in_its_tile(patches):
    ref = patches.refs[0]
    t = ref.tile.box
    inside = (t.x + 10, t.y + 10, 40, 30)
    half_out = (t.x - 20, t.y + 10, 40, 30)  # 20 of its 40 columns in the tile
    mostly_out = (t.x - 21, t.y + 10, 40, 30)
    others = [i for i, r in enumerate(patches.refs) if r.frame == ref.frame]

    def holding(box):
        return {i for i in patches.holding({ref.frame: [box]}) if i in others}

    assert 0 in holding(inside) and 0 in holding(half_out) and 0 not in holding(mostly_out)
    assert patches.holding({}) == [] and patches.holding({ref.frame: [(t.x, t.y, 0, 5)]}) == []
    # another frame's patches never hold it
    assert set(patches.holding({ref.frame: [inside]})) <= set(others)


def test_crop_smaller_than_a_tile_is_padded_and_padding_ignored(tmp_path, synth_dir):
    data = tmp_path / "small"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    img = cv2.imread(str(synth_dir / "images" / "frame_00000.jpg"))[:300, :400]
    mask = np.zeros((300, 400), np.uint8)
    mask[10:20, 30:60] = 2
    cv2.imwrite(str(data / "images" / "a.png"), img)
    cv2.imwrite(str(data / "masks" / "a.png"), mask)
    patches = PatchSet(load_frames(data))
    assert len(patches) == 1
    p = patches[0]
    # 400x300 of the 512 tile is frame, the rest padding
    assert (p.mask[: 300 * 518 // 512 - 2, : 400 * 518 // 512 - 2] != IGNORE_INDEX).all()
    assert (p.mask[-4:, :] == IGNORE_INDEX).all() and (p.mask[:, -4:] == IGNORE_INDEX).all()
    assert (p.image[-4:, -4:] == PAD_RGB).all()
    assert (p.mask == 2).sum() > 0
    stats = patches.class_stats()
    assert stats.pixels[2] == (p.mask == 2).sum()


def test_torch_dataset_gives_normalised_tensors(patches):
    image, mask = PatchDataset(patches)[0]
    assert image.shape == (3, 518, 518) and image.dtype == torch.float32
    assert mask.shape == (518, 518) and mask.dtype == torch.int64
    raw = torch.from_numpy(patches[0].image).permute(2, 0, 1).float() / 255
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)


def test_image_and_mask_of_different_sizes_is_an_error(tmp_path, synth_dir):
    data = tmp_path / "d"
    shutil.copytree(synth_dir, data)
    frames = load_frames(data)
    bad = frames.frames[0]
    cv2.imwrite(str(bad.image_path), cv2.imread(str(bad.image_path))[:700, :1200])  # after checking
    patches = PatchSet(frames)
    with pytest.raises(ValueError, match="differ in size"):
        patches[0]
