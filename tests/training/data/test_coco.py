import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from training.data.coco import mask_to_polygons, segmentation_to_mask


def filled_outlines(region):
    contours, _ = cv2.findContours(
        region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    out = np.zeros(region.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, cv2.FILLED)
    return out.astype(bool)


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_polygons_rasterise_back_to_exactly_the_same_pixels(region):
    polygons = mask_to_polygons(region)
    if not region.any():
        assert polygons == []
        return
    back = segmentation_to_mask(polygons, *region.shape)
    # COCO polygons cannot hold holes: the outlines come back filled, and nothing else
    assert (back == filled_outlines(region)).all()


def test_offset_moves_polygons_into_frame_coordinates():
    region = np.zeros((5, 6), bool)
    region[1:3, 2:5] = True
    frame = np.zeros((40, 50), bool)
    frame[11:13, 22:25] = True
    polygons = mask_to_polygons(region, offset=(20, 10))
    assert (segmentation_to_mask(polygons, 40, 50) == frame).all()
    xs = polygons[0][0::2]
    assert min(xs) == 22.25 and max(xs) == 24.75  # a quarter pixel inside the pixel edges


def test_rle_compressed_and_uncompressed_decode():
    m = np.zeros((30, 20), np.uint8, order="F")
    m[3:9, 4:15] = 1
    compressed = mask_utils.encode(m)
    compressed["counts"] = compressed["counts"].decode()  # as stored in JSON
    assert (segmentation_to_mask(compressed, 30, 20) == m.astype(bool)).all()
    flat = m.ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    assert (
        segmentation_to_mask({"counts": counts, "size": [30, 20]}, 30, 20) == m.astype(bool)
    ).all()


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        ([[1, 2, 3, 4]], "three"),
        ([], "empty"),
        ({"counts": [600], "size": [10, 10]}, "differs"),
        ("abc", "neither"),
    ],
)
def test_bad_segmentations_raise(seg, message):
    with pytest.raises(ValueError, match=message):
        segmentation_to_mask(seg, 20, 30)
