import numpy as np

from common.imaging import CLIP_MEAN, CLIP_STD, INPUT_SIZE, normalize, resize_mask, resize_tile


def test_normalize_maps_mean_to_zero_and_one_std_to_one():
    mean = np.array([[[round(m * 255) for m in CLIP_MEAN]]], dtype=np.uint8)
    out = normalize(np.repeat(np.repeat(mean, 4, 0), 5, 1))
    assert out.shape == (3, 4, 5)
    assert out.dtype == np.float32
    assert np.abs(out).max() < 0.01
    white = normalize(np.full((1, 1, 3), 255, dtype=np.uint8))[:, 0, 0]
    expected = (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(white, expected, rtol=1e-5)


def test_normalize_keeps_rgb_channel_order():
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[..., 0] = 255  # red only
    out = normalize(img)
    assert out[0].mean() > 1.0
    assert out[1].mean() < 0 and out[2].mean() < 0


def test_resizes_to_model_input_without_inventing_labels():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (512, 512), dtype=np.uint8)
    out = resize_mask(mask)
    assert out.shape == (INPUT_SIZE, INPUT_SIZE)
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    assert resize_tile(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).shape == (518, 518, 3)
