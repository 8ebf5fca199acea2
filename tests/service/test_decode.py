import io

import cv2
import numpy as np
import pytest
from PIL import Image

from service.decode import decode, read_header
from service.errors import BadImage
from service.routes.errors import status_of

LIMIT = 8192 * 8192


def encode(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(h=60, w=80):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)  # left half red (RGB)
    return img


def test_jpeg_and_png_decode_to_bgr():
    for fmt in ("JPEG", "PNG"):
        out = decode(encode(rgb(), fmt), LIMIT)
        assert out.shape == (60, 80, 3) and out.dtype == np.uint8
        assert out[30, 10, 2] > 200 and out[30, 10, 0] < 50  # red is channel 2 in BGR


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(encode(rgb(60, 80), "JPEG", exif=exif), LIMIT)
    assert out.shape == (80, 60, 3)
    assert out[5, 30, 2] > 200 and out[75, 30, 2] < 50  # the red half is now on top


@pytest.mark.parametrize(
    "array",
    [
        np.full((50, 70), 128, np.uint8),  # grayscale
        np.dstack([rgb(50, 70), np.full((50, 70), 100, np.uint8)]),  # RGBA
    ],
)
def test_grayscale_and_rgba_become_three_channels(array):
    assert decode(encode(array, "PNG"), LIMIT).shape == (50, 70, 3)


def test_16_bit_png_becomes_8_bit():
    _ok, data = cv2.imencode(".png", np.full((40, 30, 3), 40000, np.uint16))
    out = decode(data.tobytes(), LIMIT)
    assert out.dtype == np.uint8 and out.shape == (40, 30, 3) and abs(int(out[0, 0, 0]) - 156) <= 1


def test_bomb_is_refused_from_the_header():
    # a 20000 x 20000 PNG compresses to almost nothing; only the header is read
    _ok, data = cv2.imencode(
        ".png", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    with pytest.raises(BadImage) as err:
        read_header(data.tobytes(), LIMIT)
    assert status_of(err.value) == 413 and err.value.code == "image_too_large"
    with pytest.raises(BadImage, match="limit is 100"):
        decode(encode(rgb(), "PNG"), 100)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (np.random.default_rng(0).bytes(5000), "not_an_image"),
        (b"GIF89a" + bytes(100), "not_an_image"),
        (None, "unsupported_format"),
        ("truncated", "corrupt_image"),
    ],
)
def test_bad_uploads_have_codes(data, code):
    if data is None:
        data = encode(rgb(), "BMP")
    elif data == "truncated":
        data = encode(rgb(400, 400), "JPEG")[:-300]
    with pytest.raises(BadImage) as err:
        decode(data, LIMIT)
    assert err.value.code == code and status_of(err.value) == 400
