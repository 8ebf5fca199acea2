"""The probability maps kept with a result, and the heat map drawn from them."""

import numpy as np
import pytest

from service.errors import InvalidInput
from service.heatmap import LEGEND_W, decode_map, encode_maps, render_heatmap

from .test_api import jpeg

NAMES = ("normal", "motor", "cable", "spray_can")


def test_the_maps_come_back_to_within_one_level_and_zero_off_the_bed():
    rng = np.random.default_rng(0)
    anomaly = rng.random((27, 48), dtype=np.float32)
    classes = rng.random((4, 27, 48), dtype=np.float32)
    bed = np.zeros((27, 48), bool)
    bed[5:20, 10:40] = True
    data = encode_maps(anomaly, classes, bed)
    for which, want in (("anomaly", anomaly), ("motor", classes[1]), ("spray_can", classes[3])):
        got = decode_map(data, NAMES, which).astype(np.float32) / 255
        assert got.shape == (27, 48)
        assert np.abs(got - want)[bed].max() <= 0.5 / 255 + 1e-6
        assert (got[~bed] == 0).all()
    with pytest.raises(InvalidInput, match="anomaly, motor, cable, spray_can"):
        decode_map(data, NAMES, "normal")


def test_the_heat_map_is_the_overlay_size_with_its_legend_and_shows_the_map():
    level = np.zeros((27, 48), np.uint8)
    level[10:15, 20:30] = 255
    overlay = jpeg(np.full((108, 192, 3), 128, np.uint8))
    picture = render_heatmap(level, overlay, "cable")
    assert picture.shape == (108, 192 + LEGEND_W, 3)
    hot, cold = picture[50, 100], picture[5, 5]
    assert int(hot[2]) - int(hot[0]) > 50  # the turbo map's top is red
    assert np.abs(cold.astype(int) - 128).max() <= 8  # off the map the overlay is grey


def test_wide_maps_are_kept_at_half_their_grid():
    anomaly = np.full((540, 960), 0.5, np.float32)
    classes = np.full((4, 540, 960), 0.25, np.float32)
    bed = np.ones((540, 960), bool)
    bed[:, :480] = False
    data = encode_maps(anomaly, classes, bed)
    got = decode_map(data, NAMES, "anomaly")
    assert got.shape == (270, 480)
    assert (got[:, 241:] == 128).all() and (got[:, :239] == 0).all()
    assert (decode_map(data, NAMES, "cable")[:, 241:] == 64).all()
