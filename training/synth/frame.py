"""Compose one synthetic crane frame with its labels.

A frame is built in two spaces. The truck bed's contents are painted in a flat "bed
canvas" (metres scaled to pixels, as if seen straight from above), together with an
instance map that records which contaminant is visible at each pixel. The canvas is then
warped into the frame with a homography (position, size, rotation and perspective of
the truck vary), over a yard background with the truck's cab and walls, and the frame
gets uneven light, sensor noise and blur. Labels are read off the warped instance map,
so a mask is exactly what is visible in the image.

Every random choice comes from one `numpy.random.Generator` seeded by (seed, index):
the same seed and index give the same bytes on the same library versions.

Longer than the project's 400 lines for a module: its one job is one frame's composition,
in the order above (truck, yard, bed contents, warp, camera effects), each step a
function of the one generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from common.classes import ANOMALY_CLASSES
from training.synth import painters
from training.synth.painters import BGR, Piece

MIN_INSTANCE_AREA = 48
"""Visible fragments smaller than this many pixels of a 4K frame are not labelled (nor
masked); the limit scales with the frame's area, down to 4 pixels."""


COVER = 0.25
"""Default share of a bed's scrap pieces laid after the contaminants, over them: the
median contaminant is then about 60% hidden. 0 leaves every contaminant lying on top."""


def min_instance_area(width: int, height: int) -> int:
    """The smallest labelled fragment, in pixels, for a width x height frame."""
    return max(4, round(MIN_INSTANCE_AREA * width * height / (3840 * 2160)))


@dataclass(frozen=True, slots=True)
class Instance:
    """One visible contaminant in a frame.

    `class_index` is 1..3 (see common.classes); `occluded` is the fraction of the object
    hidden by scrap drawn over it or cut off by the bed edge.
    """

    instance_id: int
    class_index: int
    area: int
    occluded: float


@dataclass(frozen=True, slots=True)
class SyntheticFrame:
    """A rendered frame and its labels.

    image: (H, W, 3) uint8, BGR.
    instance_map: (H, W) uint8, 0 where nothing is labelled, else an `Instance.instance_id`.
    bed_polygon: (4, 2) float64 corners of the bed interior, COCO pixel convention.
    """

    image: npt.NDArray[np.uint8]
    instance_map: npt.NDArray[np.uint8]
    instances: tuple[Instance, ...]
    bed_polygon: npt.NDArray[np.float64]

    def class_mask(self) -> npt.NDArray[np.uint8]:
        """(H, W) uint8 class index per pixel: 0 normal, 1 motor, 2 cable, 3 spray_can."""
        lut = np.zeros(256, dtype=np.uint8)
        for inst in self.instances:
            lut[inst.instance_id] = inst.class_index
        return lut[self.instance_map]


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of frame `index` in a run seeded with `seed`, independent of the others."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


# --- truck geometry ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Truck:
    bed_length: float  # metres, along the truck
    bed_width: float
    px_per_m: float  # canvas scale
    to_frame: npt.NDArray[np.float64]  # 3x3 homography: truck metres -> frame px
    paint: BGR

    def project(self, pts_m: npt.ArrayLike) -> npt.NDArray[np.float64]:
        p = np.asarray(pts_m, dtype=np.float64).reshape(-1, 1, 2)
        out = np.asarray(cv2.perspectiveTransform(p, self.to_frame), dtype=np.float64)
        return out.reshape(-1, 2)


def _truck_outline(length: float, width: float) -> npt.NDArray[np.float64]:
    """Bed, walls and cab in truck metres; the bed interior is [0, L] x [0, W]."""
    return np.array(
        [[-0.15, -0.12], [length + 2.6, -0.12], [length + 2.6, width + 0.12], [-0.15, width + 0.12]]
    )


def _sample_truck(rng: np.random.Generator, width: int, height: int) -> _Truck:
    length = rng.uniform(5.2, 7.6)
    bed_w = rng.uniform(2.25, 2.5)
    paint = painters.jitter(
        [(40, 40, 150), (150, 90, 30), (40, 150, 200), (70, 70, 70), (30, 110, 40)][
            rng.integers(5)
        ],
        rng,
        20,
    )
    outline = _truck_outline(length, bed_w)
    centre = outline.mean(axis=0)
    frac = rng.uniform(0.5, 0.72)
    scale = frac * min(width, height * 16 / 9) / (length + 2.75)
    for _ in range(200):
        angle = rng.uniform(-0.6, 0.6) + (math.pi if rng.random() < 0.5 else 0.0)
        # perspective: one end of the truck nearer the camera than the other
        tilt = rng.uniform(-0.035, 0.035, 2)
        c, s = math.cos(angle), math.sin(angle)
        move = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
        persp = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]])
        rot = np.array([[c * scale, -s * scale, 0], [s * scale, c * scale, 0], [0, 0, 1]])
        cx = width / 2 + rng.uniform(-0.12, 0.12) * width
        cy = height / 2 + rng.uniform(-0.1, 0.1) * height
        shift = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
        h = shift @ rot @ persp @ move
        corners = cv2.perspectiveTransform(outline.reshape(-1, 1, 2), h).reshape(-1, 2)
        m = 0.02 * min(width, height)
        if (
            corners[:, 0].min() > m
            and corners[:, 1].min() > m
            and corners[:, 0].max() < width - m
            and corners[:, 1].max() < height - m
        ):
            return _Truck(length, bed_w, scale * 1.05, h, paint)
        scale *= 0.97
    raise RuntimeError(f"cannot fit a truck into a {width}x{height} frame")


# --- yard ----------------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator, width: int, height: int, cells: int, lo: float, hi: float
) -> npt.NDArray[np.float32]:
    """A smooth random field in [lo, hi] of the given size, from a coarse grid of cells."""
    gh = max(2, round(cells * height / max(width, height)))
    gw = max(2, round(cells * width / max(width, height)))
    coarse = rng.uniform(lo, hi, (gh, gw)).astype(np.float32)
    out = np.asarray(
        cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), dtype=np.float32
    )
    return out


def _paint_yard(rng: np.random.Generator, width: int, height: int) -> npt.NDArray[np.uint8]:
    base = np.array(painters.jitter((118, 128, 135), rng, 15), dtype=np.float32)
    small = (max(2, width // 8), max(2, height // 8))
    shade = _smooth_field(rng, small[0], small[1], 12, 0.7, 1.15)
    grain = rng.normal(1.0, 0.08, (small[1], small[0])).astype(np.float32)
    yard = np.clip(base * (shade * grain)[..., None], 0, 255).astype(np.uint8)
    img = np.asarray(
        cv2.resize(yard, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )
    # tyre tracks and stray bits of scrap on the ground
    s = min(width, height) / 1000
    for _ in range(int(rng.integers(2, 6))):
        p0 = rng.uniform(0, 1, 2) * (width, height)
        p1 = p0 + rng.normal(0, 1, 2) * width * 0.6
        track = painters.scale_color(tuple(int(v) for v in base), rng.uniform(0.82, 0.92))  # type: ignore[arg-type]
        cv2.line(
            img,
            (int(p0[0]), int(p0[1])),
            (int(p1[0]), int(p1[1])),
            track,
            max(1, int(rng.uniform(20, 45) * s)),
            cv2.LINE_AA,
        )
    for _ in range(int(rng.integers(10, 40))):
        centre = rng.uniform(0, 1, 2) * (width, height)
        painter = painters.SCRAP_PAINTERS[
            rng.choice(len(painters.SCRAP_PAINTERS), p=painters.SCRAP_WEIGHTS)
        ]
        painter(rng, centre, 0.3 * s * 1000 / 3).draw(img)
    return img


# --- bed contents ----------------------------------------------------------------------------


def _paint_bed(
    rng: np.random.Generator, truck: _Truck, contaminants: list[int], cover: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], list[float]]:
    """Paint the bed canvas; return (image, instance map, full footprint area per instance).

    A share `cover` of the scrap pieces is laid after the contaminants, with up to two
    pieces across each contaminant's edge (fewer when `cover` is below COVER).
    """
    s = truck.px_per_m
    cw, ch = math.ceil(truck.bed_length * s), math.ceil(truck.bed_width * s)
    # the floor of the pile: dark gaps between pieces
    floor = _smooth_field(rng, max(2, cw // 6), max(2, ch // 6), 30, 25, 75)
    canvas = np.asarray(
        cv2.resize(np.repeat(floor[..., None], 3, axis=2).astype(np.uint8), (cw, ch)),
        dtype=np.uint8,
    )
    ids = np.zeros((ch, cw), dtype=np.uint8)
    shadow_dir = rng.normal(0, 1, 2)
    shadow_dir *= 0.035 * s / max(float(np.linalg.norm(shadow_dir)), 1e-6)
    shadow: BGR = (18, 18, 20)

    def scrap_piece(centre: npt.ArrayLike) -> Piece:
        k = rng.choice(len(painters.SCRAP_PAINTERS), p=painters.SCRAP_WEIGHTS)
        return painters.SCRAP_PAINTERS[k](rng, centre, s)

    def lay(piece: Piece, occluding: bool) -> None:
        piece.draw_shadow(canvas, (shadow_dir[0], shadow_dir[1]), shadow)
        piece.draw(canvas)
        if occluding:
            piece.draw_footprint(ids, 0)

    area_m2 = truck.bed_length * truck.bed_width
    n_scrap = int(area_m2 * rng.uniform(22, 34))
    under = int(n_scrap * (1.0 - cover))
    for _ in range(under):
        lay(scrap_piece(rng.uniform(-0.05, 1.05, 2) * (cw, ch)), occluding=False)

    placed: list[tuple[npt.NDArray[np.float64], float]] = []
    pieces: list[Piece] = []
    full_area: list[float] = []
    for k, cls in enumerate(contaminants, start=1):
        painter = painters.CONTAMINANT_PAINTERS[cls - 1]
        for _ in range(50):  # keep contaminants apart so that each outline stays its own
            centre = rng.uniform(-0.03, 1.03, 2) * (cw, ch)
            piece = painter(rng, centre, s)
            x0, y0, x1, y1 = piece.box
            mid = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            radius = math.hypot(x1 - x0, y1 - y0) / 2
            if all(np.linalg.norm(mid - m) > radius + r for m, r in placed):
                break
        placed.append((mid, radius))
        pieces.append(piece)
        lay(piece, occluding=True)
        piece.draw_footprint(ids, k)
        full_area.append(float(piece.footprint_area()))
        # a piece or two lying across its edge
        across = int(rng.integers(0, 3))
        for _ in range(across if cover >= COVER else round(across * cover / COVER)):
            edge = mid + rng.normal(0, 1, 2) * radius * 0.8
            lay(scrap_piece(edge), occluding=True)

    for _ in range(n_scrap - under):
        lay(scrap_piece(rng.uniform(-0.05, 1.05, 2) * (cw, ch)), occluding=bool(contaminants))

    for k, piece in enumerate(pieces, start=1):
        _fill_holes(canvas, ids, piece, k)
    return canvas, ids, full_area


def _fill_holes(
    canvas: npt.NDArray[np.uint8], ids: npt.NDArray[np.uint8], piece: Piece, k: int
) -> None:
    """Repaint the contaminant where scrap drawn over it left a hole inside its outline.

    A COCO polygon cannot describe holes; rather than label scrap as contaminant, the
    contaminant is drawn back into such holes, so image and outline agree.
    """
    h, w = ids.shape
    x0, y0, x1, y1 = piece.box
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    region = (ids[y0:y1, x0:x1] == k).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    holes = (filled > 0) & (region == 0) & (ids[y0:y1, x0:x1] == 0)
    if not holes.any():
        return
    patch = canvas[y0:y1, x0:x1].copy()
    piece.translated(-x0, -y0).draw(patch)
    canvas[y0:y1, x0:x1][holes] = patch[holes]
    ids[y0:y1, x0:x1][holes] = k


# --- the frame -------------------------------------------------------------------------------


def render_frame(
    seed: int, index: int, width: int = 3840, height: int = 2160, cover: float = COVER
) -> SyntheticFrame:
    """Render frame `index` of a run seeded with `seed`, at width x height pixels.

    `cover` is the share of the bed's scrap laid over the contaminants (see COVER).
    """
    if width < 64 or height < 64:
        raise ValueError(f"frame size must be at least 64x64, got {width}x{height}")
    if not 0.0 <= cover <= 1.0:
        raise ValueError(f"cover must be in [0, 1], got {cover}")
    rng = frame_rng(seed, index)
    truck = _sample_truck(rng, width, height)
    # 30% drawn empty; with contaminants fully hidden under scrap, about a third end up clean
    n = 0 if rng.random() < 0.3 else int(min(1 + rng.geometric(0.45), 6))
    contaminants = [int(c) + 1 for c in rng.choice(len(ANOMALY_CLASSES), size=n, p=[0.4, 0.3, 0.3])]

    img = _paint_yard(rng, width, height)
    outline = truck.project(_truck_outline(truck.bed_length, truck.bed_width))
    off = np.array([0.02, 0.025]) * min(width, height)
    cv2.fillPoly(img, [_fixed(outline + off)], (30, 32, 34), cv2.LINE_AA, 4)
    cv2.fillPoly(img, [_fixed(outline)], truck.paint, cv2.LINE_AA, 4)
    L, W = truck.bed_length, truck.bed_width
    cab = truck.project([[L + 0.35, 0.0], [L + 2.55, 0.0], [L + 2.55, W], [L + 0.35, W]])
    glass = truck.project(
        [[L + 2.1, 0.1], [L + 2.45, 0.1], [L + 2.45, W - 0.1], [L + 2.1, W - 0.1]]
    )
    cv2.fillPoly(img, [_fixed(cab)], painters.scale_color(truck.paint, 1.15), cv2.LINE_AA, 4)
    cv2.fillPoly(img, [_fixed(glass)], (45, 40, 35), cv2.LINE_AA, 4)

    canvas, canvas_ids, full_area = _paint_bed(rng, truck, contaminants, cover)
    # Bed corners in OpenCV's convention (pixel i has its centre at i), as warpPerspective
    # uses them; the COCO polygon written out is shifted by half a pixel.
    bed = truck.project([[0.0, 0.0], [L, 0.0], [L, W], [0.0, W]])
    x0, y0 = np.floor(bed.min(axis=0)).astype(int)
    x1, y1 = np.ceil(bed.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    # canvas px -> truck metres -> frame px, restricted to the bed's bounding box
    to_roi = (
        np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]])
        @ truck.to_frame
        @ np.diag([1 / truck.px_per_m, 1 / truck.px_per_m, 1.0])
    )
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpPerspective(canvas, to_roi, size, flags=cv2.INTER_LINEAR)
    warped_ids = cv2.warpPerspective(canvas_ids, to_roi, size, flags=cv2.INTER_NEAREST)
    inside = np.zeros((size[1], size[0]), dtype=np.uint8)
    cv2.fillPoly(inside, [_fixed(bed - (x0, y0))], 1, cv2.LINE_8, 4)
    np.copyto(img[y0:y1, x0:x1], warped, where=inside[..., None] > 0)
    instance_map = np.zeros((height, width), dtype=np.uint8)
    instance_map[y0:y1, x0:x1] = warped_ids * inside
    # the bed's walls hide what lies under their top edge
    wall = max(1, round(0.03 * truck.px_per_m))
    cv2.polylines(
        img, [_fixed(bed)], True, painters.scale_color(truck.paint, 1.3), wall, cv2.LINE_AA, 4
    )
    walls = cv2.polylines(np.zeros_like(instance_map), [_fixed(bed)], True, 1, wall, cv2.LINE_8, 4)
    instance_map[walls > 0] = 0

    img = _camera(rng, img)
    visible_canvas = np.bincount(canvas_ids.ravel(), minlength=len(contaminants) + 1)
    instances = _instances(
        instance_map, contaminants, full_area, visible_canvas, min_instance_area(width, height)
    )
    return SyntheticFrame(img, instance_map, instances, bed + 0.5)


def _fixed(points: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """Points as OpenCV fixed-point coordinates with 4 fractional bits."""
    return np.round(points * 16).astype(np.int32)


def _camera(rng: np.random.Generator, img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Uneven daylight, sensor noise and lens blur."""
    h, w = img.shape[:2]
    light = _smooth_field(rng, max(2, w // 4), max(2, h // 4), 6, 0.78, 1.12)
    noise = rng.normal(0.0, rng.uniform(2.0, 6.0), (max(2, h // 4), max(2, w // 4))).astype(
        np.float32
    )
    gain = cv2.resize(light, (w, h), interpolation=cv2.INTER_LINEAR)
    offset = cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)
    out = img.astype(np.float32)
    out *= gain[..., None]
    out += offset[..., None]
    fine = rng.normal(0.0, 3.0, (h, w)).astype(np.float32) if rng.random() < 0.3 else None
    if fine is not None:
        out += fine[..., None]
    result = np.clip(out, 0, 255).astype(np.uint8)
    sigma = rng.uniform(0.4, 1.4)
    return np.asarray(cv2.GaussianBlur(result, (0, 0), sigma), dtype=np.uint8)


def _instances(
    instance_map: npt.NDArray[np.uint8],
    contaminants: list[int],
    full_area: list[float],
    visible_canvas: npt.NDArray[np.int64],
    min_area: int,
) -> tuple[Instance, ...]:
    """Describe each visible contaminant; unlabel fragments below `min_area` pixels.

    Occlusion is measured in the bed canvas: the share of the object's whole footprint
    that scrap, other objects or the canvas border (the bed edge) hide.
    """
    counts = np.bincount(instance_map.ravel(), minlength=len(contaminants) + 1)
    out = []
    for k, cls in enumerate(contaminants, start=1):
        area = int(counts[k])
        if area < min_area:
            instance_map[instance_map == k] = 0
            continue
        hidden = 1.0 - min(1.0, float(visible_canvas[k]) / max(full_area[k - 1], 1.0))
        out.append(Instance(k, cls, area, round(hidden, 4)))
    return tuple(out)
