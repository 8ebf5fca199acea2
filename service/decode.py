"""Decode stage: upload bytes -> (H, W, 3) uint8 BGR frame, with the limits checked first.

The header is read before any pixel is decoded (Pillow reads only the header on open), so
a decompression bomb is refused from its declared size. OpenCV then decodes: EXIF
orientation is applied, grayscale and RGBA become 3 channels, 16-bit PNG becomes 8-bit.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from service.errors import BadImage, ImageTooLarge

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says: format and size (before EXIF rotation)."""

    format: str
    width: int
    height: int


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Check the format and the declared size; BadImage when either is unacceptable."""
    if not data:
        raise BadImage("empty_image", "the image field is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = str(im.format), im.size
    except Image.DecompressionBombError:
        raise ImageTooLarge(
            "image_too_large", "the image declares more pixels than this service accepts"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadImage("not_an_image", "the upload is not a JPEG or PNG image") from None
    if fmt not in FORMATS:
        raise BadImage("unsupported_format", f"{fmt} images are not accepted; send JPEG or PNG")
    if w * h > max_pixels:
        raise ImageTooLarge(
            "image_too_large", f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}"
        )
    if not _complete(fmt, data):
        raise BadImage("corrupt_image", f"the {fmt} data is truncated (no end marker)")
    return ImageHeader(fmt, w, h)


def _complete(fmt: str, data: bytes) -> bool:
    """Whether the file ends as its format says (OpenCV decodes truncated JPEGs silently)."""
    tail = data[-64:]
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    return b"IEND" in tail


def decode(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The frame as (H, W, 3) uint8 BGR, upright; BadImage for anything that is not one."""
    read_header(data, max_pixels)
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise BadImage("corrupt_image", "the image could not be decoded (truncated or corrupt)")
    return np.ascontiguousarray(frame, dtype=np.uint8)


def thumbnail(jpeg: bytes, width: int) -> bytes:
    """A stored JPEG (an overlay) scaled down to `width` pixels wide, never up.

    Decoded at a power-of-two reduction where the JPEG allows it (cheaper than the whole
    image), then resized; quality 80.
    """
    head = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if head is None:
        raise BadImage("corrupt_image", "the stored image cannot be decoded")
    h, w = head.shape[:2]
    if width >= w:
        return jpeg
    size = (width, max(1, round(h * width / w)))
    small = cv2.resize(head, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("could not encode the thumbnail")
    return bytes(data.tobytes())
