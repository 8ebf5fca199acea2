"""A frame's probability maps, kept with its result, and the heat map drawn from them.

The pipeline keeps `maps.png` beside the mask and the overlay: the merged maps at the map
grid (1/map_stride of the frame; half that when wider than KEEP_WIDTH) as 8-bit
probabilities (0..255 for 0..1), stacked top to bottom: the anomaly map first, then one
map per anomaly class in the bundle's order; cells outside the bed are 0.
`GET /v1/frames/{id}/heatmap.png` draws one of them in a colour map over the overlay,
greyed, with the bed outline the overlay already has and a legend of the scale.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from service.errors import InvalidInput, NotFound

MAPS = "maps.png"
KEEP_WIDTH = 640
"""Maps wider than this are kept at half their grid (a quarter of the bytes and time)."""
LEGEND_W = 90
"""Pixels of legend to the right of the map."""


def encode_maps(
    anomaly: npt.NDArray[np.float32],
    classes: npt.NDArray[np.float32],
    bed_mask: npt.NDArray[np.bool_],
) -> bytes:
    """The maps as one PNG: the anomaly map, then each anomaly class's, stacked.

    `anomaly` is (H', W'), `classes` (C, H', W') with normal first; 8 bits each, zero
    outside the bed.
    """
    h, w = anomaly.shape
    # the maps are smooth (sigma 4 at the model's input): wide ones are halved
    size = (round(w / 2), round(h / 2)) if w > KEEP_WIDTH else (w, h)
    inside = bed_mask.astype(np.float32)
    levels = [
        cv2.convertScaleAbs(  # x 255, rounded, saturated to 0..255
            cv2.resize(m * inside, size, interpolation=cv2.INTER_AREA), alpha=255
        )
        for m in (anomaly, *classes[1:])
    ]
    ok, data = cv2.imencode(".png", np.concatenate(levels))
    if not ok:
        raise RuntimeError("could not encode the maps")
    return bytes(data.tobytes())


def decode_map(maps_png: bytes, names: tuple[str, ...], which: str) -> npt.NDArray[np.uint8]:
    """One map of a stored maps.png: "anomaly" or an anomaly class of `names`.

    `names` are the bundle's classes, normal first. InvalidInput for another name.
    """
    order = ("anomaly", *names[1:])
    if which not in order:
        raise InvalidInput("invalid_query", f"class is one of {', '.join(order)}")
    stack = cv2.imdecode(np.frombuffer(maps_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if stack is None or stack.shape[0] % len(order):
        raise NotFound("result_not_ready", "the frame's maps cannot be read")
    rows = stack.shape[0] // len(order)
    k = order.index(which)
    return np.ascontiguousarray(stack[k * rows : (k + 1) * rows])


def render_heatmap(
    level: npt.NDArray[np.uint8], overlay_jpg: bytes, title: str
) -> npt.NDArray[np.uint8]:
    """The map in the turbo colour map over the greyed overlay, with a legend (BGR)."""
    base = cv2.imdecode(np.frombuffer(overlay_jpg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if base is None:
        raise NotFound("result_not_ready", "the frame's overlay cannot be read")
    h, w = base.shape
    # the map grid may hold a partial last cell: scale it to cover the frame as cells do
    up = cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(up, cv2.COLORMAP_TURBO)
    grey = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    v = up.astype(np.float32) / 255
    weight = np.where(up > 0, 0.25 + 0.6 * v, 0.0)[..., None]  # strong where high; none off bed
    picture = (grey * (1 - weight) + heat * weight).astype(np.uint8)
    return np.concatenate([picture, _legend(h, title)], axis=1)


def _legend(h: int, title: str) -> npt.NDArray[np.uint8]:
    """A vertical scale from 1 (top) to 0, labelled, with the map's name."""
    out = np.full((h, LEGEND_W, 3), 24, np.uint8)
    top, bottom = 40, h - 20
    ramp = np.linspace(255, 0, max(2, bottom - top)).astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(ramp, 20, axis=1), cv2.COLORMAP_TURBO)
    out[top:bottom, 10:30] = bar[: bottom - top]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    cv2.putText(out, title[:10], (6, 24), font, scale, (230, 230, 230), 1, cv2.LINE_AA)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = round(bottom - v * (bottom - top - 1))
        cv2.line(out, (30, y), (36, y), (230, 230, 230), 1)
        cv2.putText(out, f"{v:.2f}", (40, y + 4), font, scale, (230, 230, 230), 1, cv2.LINE_AA)
    return out
