from pathlib import Path

import cv2
import numpy as np
import pytest

from common.bed import BED_INPUT, bed_input, mask_polygon
from common.bundle import load_bundle
from service.bedmodel import LearnedBed
from service.settings import CameraBed
from service.stages import bed_crop
from training.synth import render_frame

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def polygon_iou(a, b, w, h):
    ma, mb = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    cv2.fillPoly(ma, [np.round(a).astype(np.int32)], 1)
    cv2.fillPoly(mb, [np.round(b).astype(np.int32)], 1)
    return (ma & mb).sum() / max((ma | mb).sum(), 1)


def test_bed_input_is_the_downscaled_rgb_frame():
    frame = np.zeros((2160, 3840, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    x = bed_input(frame)
    assert x.shape == (3, *BED_INPUT) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[2], -1.0)


def test_the_outline_of_a_region_is_found_in_frame_pixels():
    h, w = BED_INPUT
    prob = np.zeros((h, w), np.float32)
    quad = np.array([[50, 40], [300, 60], [280, 180], [70, 170]])
    cv2.fillPoly(prob, [quad], 0.9)
    prob[5:10, 5:10] = 0.9  # a smaller blob is ignored
    poly = mask_polygon(prob, 3840, 2160)
    assert poly is not None and 4 <= len(poly) <= 8
    expected = (quad + 0.5) * [3840 / w, 2160 / h]
    assert polygon_iou(poly, expected, 3840, 2160) > 0.97
    assert mask_polygon(np.zeros((h, w), np.float32), 3840, 2160) is None


@pytest.fixture(scope="module")
def learned():
    return LearnedBed(load_bundle(DEMO))


@pytest.mark.parametrize("index", range(4))
def test_the_shipped_bed_model_finds_held_out_beds(learned, index):
    frame = render_frame(9, index, 1920, 1080)  # seed 9: neither its training nor test seed
    bed = bed_crop(frame.image, CameraBed(bed="learned"), learned)
    assert bed.strategy == "learned"
    assert polygon_iou(bed.polygon - 0.5, frame.bed_polygon - 0.5, 1920, 1080) > 0.9


def test_learned_without_a_bed_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs the bundle's bed model"):
        bed_crop(np.zeros((100, 100, 3), np.uint8), CameraBed(bed="learned"))


class Blind:
    def polygon(self, frame):
        return None


def test_no_bed_seen_falls_back_to_the_full_frame():
    bed = bed_crop(np.zeros((100, 200, 3), np.uint8), CameraBed(bed="learned"), Blind())
    assert bed.strategy == "learned-none-full" and bed.area == 100 * 200
