"""Augmentation a top-down crane camera allows, applied to a training patch and its mask.

The camera looks straight down into the bed, so a patch turned by 90 degrees or mirrored
is a patch the camera could have seen: the eight symmetries of the square are drawn
uniformly and applied to image and mask alike. The photometric changes stand for what
differs between cameras, hours and weather: brightness and contrast, a slight defocus or
motion blur, and JPEG re-encoding at the qualities cameras are set to. They change the
image only; the mask keeps its labels.

Each draw comes from the `numpy.random.Generator` it is given, so a patch's augmentation
is fixed by the seed its caller derives (run seed, epoch, position in the epoch).
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from training.config import AugmentConfig


def augment(
    image: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Return an augmented copy of an (S, S, 3) uint8 RGB patch and its (S, S) mask.

    Every draw is made whether or not its change is enabled, so turning one change off
    leaves the others' draws for the same seed as they were.
    """
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    gain = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    blur_draw, sigma = rng.random(), rng.uniform(0.5, 1.5)
    jpeg_draw, quality = (
        rng.random(),
        int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
    )

    if cfg.symmetries:
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    if cfg.brightness or cfg.contrast:
        mean = image.mean(dtype=np.float32)
        adjusted = (image.astype(np.float32) - mean) * contrast + mean * gain
        image = np.clip(adjusted + 0.5, 0, 255).astype(np.uint8)
    if blur_draw < cfg.blur:
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), dtype=np.uint8)
    if jpeg_draw < cfg.jpeg:
        # cv2 encodes BGR; the channel order does not matter for a round trip
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a training patch")
        image = np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), dtype=np.uint8)
    return image, mask
