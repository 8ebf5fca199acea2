"""Painters for the things a crane camera sees in a truck bed: scrap and contaminants.

Each painter returns a `Piece`: a list of strokes (filled polygons and thick polylines)
in bed-canvas pixels. A piece is drawn twice from the same strokes: in colour onto the
canvas, and as a footprint onto the instance map, so that image and labels cannot drift.
Sizes are given in metres and scaled by `px_per_m`, so objects keep realistic
proportions at any frame size. Colours are BGR, as OpenCV writes them.

Longer than the project's 400 lines for a module: it is a catalogue, one painter per kind
of object over the same few drawing helpers and colour tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

SHIFT = 4
"""Fractional bits of stroke coordinates (OpenCV's `shift`): 1/16 px precision."""
_ONE = 1 << SHIFT
FILLED = -1

BGR = tuple[int, int, int]
Points = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class Stroke:
    """A filled polygon (thickness FILLED) or a polyline of `thickness` px, fixed-point points."""

    points: Points
    color: BGR
    thickness: int = FILLED
    closed: bool = True

    def draw(
        self, img: npt.NDArray[np.uint8], color: BGR | int | None = None, aa: bool = True
    ) -> None:
        """Draw onto `img`; `color` overrides the stroke's colour (footprints, shadows)."""
        c = self.color if color is None else color
        line = cv2.LINE_AA if aa else cv2.LINE_8
        if self.thickness == FILLED:
            cv2.fillPoly(img, [self.points], c, line, SHIFT)
        else:
            cv2.polylines(img, [self.points], self.closed, c, self.thickness, line, SHIFT)


@dataclass(slots=True)
class Piece:
    """One object: strokes drawn in order, and the integer box (x0, y0, x1, y1) they cover."""

    strokes: list[Stroke]
    box: tuple[int, int, int, int]

    def draw(self, img: npt.NDArray[np.uint8]) -> None:
        """Draw the piece in colour."""
        for s in self.strokes:
            s.draw(img)

    def draw_footprint(self, mask: npt.NDArray[np.uint8], value: int) -> None:
        """Set every pixel the piece covers to `value` (no anti-aliasing)."""
        for s in self.strokes:
            s.draw(mask, value, aa=False)

    def translated(self, dx: int, dy: int) -> Piece:
        """The same piece moved by whole pixels (for drawing into a cut-out patch)."""
        d = np.array((dx << SHIFT, dy << SHIFT), dtype=np.int32)
        x0, y0, x1, y1 = self.box
        moved = [Stroke(s.points + d, s.color, s.thickness, s.closed) for s in self.strokes]
        return Piece(moved, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))

    def footprint_area(self) -> int:
        """Number of pixels the piece covers, unclipped by any canvas border."""
        x0, y0, x1, y1 = self.box
        scratch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        self.translated(-x0, -y0).draw_footprint(scratch, 1)
        return int(scratch.sum())

    def draw_shadow(
        self, img: npt.NDArray[np.uint8], offset: tuple[float, float], color: BGR
    ) -> None:
        """Draw the piece's outline shifted by `offset` px in a dark colour: a cast shadow."""
        d = np.round(np.asarray(offset) * _ONE).astype(np.int32)
        for s in self.strokes:
            Stroke(s.points + d, color, s.thickness, s.closed).draw(img)


def _piece(strokes: list[Stroke]) -> Piece:
    pts = np.concatenate([s.points for s in strokes]) / _ONE
    pad = max(s.thickness for s in strokes) // 2 + 2
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + pad
    return Piece(strokes, (int(x0), int(y0), int(x1), int(y1)))


def place(local_m: npt.ArrayLike, center: npt.ArrayLike, angle: float, px_per_m: float) -> Points:
    """Rotate (N, 2) points in metres by `angle`, scale to px and move to `center` (px)."""
    p = np.asarray(local_m, dtype=np.float64).reshape(-1, 2)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out = p @ rot.T * px_per_m + np.asarray(center, dtype=np.float64)
    fixed: Points = np.round(out * _ONE).astype(np.int32)
    return fixed


def _rect(length: float, width: float, x: float = 0.0, y: float = 0.0) -> npt.NDArray[np.float64]:
    """Corners of a length x width rectangle centred at (x, y), metres."""
    hl, hw = length / 2, width / 2
    return np.array([[x - hl, y - hw], [x + hl, y - hw], [x + hl, y + hw], [x - hl, y + hw]])


def _px(metres: float, px_per_m: float) -> int:
    return max(1, round(metres * px_per_m))


def jitter(color: BGR, rng: np.random.Generator, amount: int) -> BGR:
    """`color` with each channel moved by up to +-`amount`."""
    b, g, r = (int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in color)
    return (b, g, r)


def scale_color(color: BGR, f: float) -> BGR:
    """`color` brightened (f > 1) or darkened (f < 1), clipped to 0..255."""
    b, g, r = (int(np.clip(v * f, 0, 255)) for v in color)
    return (b, g, r)


# --- colours -----------------------------------------------------------------------------


def steel_color(rng: np.random.Generator) -> BGR:
    """A colour of steel scrap: bare grey, dark, rusty, galvanised, or faded paint."""
    kind = rng.choice(5, p=[0.3, 0.2, 0.32, 0.1, 0.08])
    if kind == 0:  # bare grey steel
        v = int(rng.integers(95, 165))
        return jitter((v + 6, v + 2, v - 4), rng, 6)
    if kind == 1:  # dark, oily
        v = int(rng.integers(35, 85))
        return jitter((v, v, v + 4), rng, 5)
    if kind == 2:  # rust: brown, not orange
        r = int(rng.integers(80, 150))
        return jitter((int(r * 0.42), int(r * 0.6), r), rng, 8)
    if kind == 3:  # galvanised, bright
        v = int(rng.integers(165, 215))
        return jitter((v + 4, v, v - 6), rng, 6)
    # faded painted plate: low saturation so that colour alone does not give a motor away
    base = rng.integers(60, 170, size=3)
    grey = base.mean()
    faded = grey + (base - grey) * 0.45
    b, g, r = (int(v) for v in faded)
    return (b, g, r)


MOTOR_PAINTS: tuple[BGR, ...] = (
    (140, 95, 45),  # blue
    (70, 110, 60),  # green
    (125, 125, 120),  # grey
    (45, 45, 48),  # black
    (40, 45, 120),  # dark red
    (150, 150, 140),  # light grey
)
INSULATION: tuple[BGR, ...] = (
    (30, 30, 30),
    (90, 90, 90),
    (30, 120, 230),
    (170, 90, 30),
    (40, 40, 190),
    (40, 200, 220),
    (225, 225, 220),
    (60, 160, 70),
)
LABEL_COLORS: tuple[BGR, ...] = (
    (40, 40, 210),
    (210, 120, 30),
    (40, 190, 240),
    (60, 170, 60),
    (200, 60, 160),
    (245, 245, 245),
    (25, 25, 25),
    (20, 130, 240),
)
COPPER: BGR = (60, 120, 200)


# --- scrap -------------------------------------------------------------------------------


def plate(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """A cut or torn steel plate: a jittered quadrilateral, some corners cut, edge highlight."""
    length = min(max(float(rng.lognormal(math.log(0.45), 0.5)), 0.1), 1.6)
    width = length * rng.uniform(0.3, 0.9)
    corners = _rect(length, width)
    corners += rng.normal(0, 0.08, corners.shape) * np.array([length, width])
    outline = []
    for i in range(4):  # cut some corners: torn and flame-cut edges
        a, b, c = corners[i - 1], corners[i], corners[(i + 1) % 4]
        if rng.random() < 0.4:
            t1, t2 = rng.uniform(0.1, 0.35, 2)
            outline += [b + (a - b) * t1, b + (c - b) * t2]
        else:
            outline.append(b)
    local = np.array(outline)
    angle = rng.uniform(0, 2 * math.pi)
    color = steel_color(rng)
    pts = place(local, center, angle, px_per_m)
    edge = _px(0.012, px_per_m)
    n = len(pts)
    k = int(rng.integers(n))
    strokes = [
        Stroke(pts, color),
        Stroke(pts, scale_color(color, 0.7), edge),
        Stroke(pts[[k, (k + 1) % n]], scale_color(color, 1.35), edge, closed=False),
    ]
    for _ in range(int(rng.integers(0, 3))):  # rust patches
        c = local[rng.integers(n)] * rng.uniform(0.1, 0.5)
        r = width * rng.uniform(0.1, 0.25) * np.array([1.0, rng.uniform(0.4, 1.0)])
        t = np.linspace(0, 2 * math.pi, 12)
        blob = np.stack([np.cos(t), np.sin(t)], axis=1) * r * rng.uniform(0.7, 1.0, (12, 1)) + c
        rust = (int(color[0] * 0.6), int(color[1] * 0.75), min(255, int(color[2] * 0.95) + 15))
        strokes.append(Stroke(place(blob, center, angle, px_per_m), rust))
    return _piece(strokes)


def beam(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """An I- or U-beam seen from above: a long bar with flange edges."""
    length = rng.uniform(0.6, 2.8)
    width = rng.uniform(0.08, 0.3)
    angle = rng.uniform(0, 2 * math.pi)
    color = steel_color(rng)
    body = place(_rect(length, width), center, angle, px_per_m)
    line = _px(0.015, px_per_m)
    flange = [
        place(np.array([[-length / 2, y], [length / 2, y]]), center, angle, px_per_m)
        for y in (-width * 0.3, width * 0.3)
    ]
    return _piece(
        [
            Stroke(body, color),
            Stroke(flange[0], scale_color(color, 0.6), line, closed=False),
            Stroke(flange[1], scale_color(color, 1.3), line, closed=False),
        ]
    )


def rod(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """A rebar or round bar, sometimes bent once."""
    length = rng.uniform(0.4, 3.0)
    diameter = rng.uniform(0.01, 0.04)
    angle = rng.uniform(0, 2 * math.pi)
    bend = rng.uniform(-0.8, 0.8) if rng.random() < 0.4 else 0.0
    t = rng.uniform(0.2, 0.8)
    knee = np.array([length * (t - 0.5), 0.0])
    end = knee + length * (1 - t) * np.array([math.cos(bend), math.sin(bend)])
    local = np.array([[-length / 2, 0.0], knee, end])
    color = steel_color(rng)
    pts = place(local, center, angle, px_per_m)
    w = _px(diameter, px_per_m)
    return _piece(
        [
            Stroke(pts, color, w, closed=False),
            Stroke(pts, scale_color(color, 1.4), max(1, w // 3), closed=False),
        ]
    )


def pipe(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """A pipe or tube: shaded cylinder with a dark open end."""
    length = rng.uniform(0.3, 2.5)
    diameter = rng.uniform(0.04, 0.22)
    angle = rng.uniform(0, 2 * math.pi)
    color = steel_color(rng)
    axis = place(np.array([[-length / 2, 0.0], [length / 2, 0.0]]), center, angle, px_per_m)
    w = _px(diameter, px_per_m)
    hi = place(
        np.array([[-length / 2, -diameter * 0.2], [length / 2, -diameter * 0.2]]),
        center,
        angle,
        px_per_m,
    )
    end = place(_rect(diameter * 0.25, diameter * 0.75, x=length / 2), center, angle, px_per_m)
    return _piece(
        [
            Stroke(axis, scale_color(color, 0.75), w, closed=False),
            Stroke(axis, color, max(1, int(w * 0.7)), closed=False),
            Stroke(hi, scale_color(color, 1.45), max(1, w // 5), closed=False),
            Stroke(end, (20, 20, 22)),
        ]
    )


def turnings(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """A tangle of machining turnings: bright thin curls."""
    strokes = []
    v = int(rng.integers(120, 220))
    color = jitter((v, v, v - 8), rng, 10)
    for _ in range(int(rng.integers(2, 6))):
        c = rng.normal(0, 0.05, 2)
        r0 = rng.uniform(0.01, 0.04)
        turns = rng.uniform(1.5, 4.0)
        t = np.linspace(0, 2 * math.pi * turns, int(12 * turns))
        drift = np.stack([t, t], axis=1) * rng.normal(0, 0.006, 2)
        local = np.stack([np.cos(t), np.sin(t)], axis=1) * r0 + drift + c
        strokes.append(
            Stroke(place(local, center, 0.0, px_per_m), color, _px(0.004, px_per_m), closed=False)
        )
    return _piece(strokes)


SCRAP_PAINTERS = (plate, beam, rod, pipe, turnings)
SCRAP_WEIGHTS = (0.42, 0.1, 0.18, 0.1, 0.2)


# --- contaminants --------------------------------------------------------------------------


def motor(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """An electric motor: cylinder body with end caps, fins or open windings, shaft, box."""
    length = rng.uniform(0.22, 0.6)
    diameter = rng.uniform(0.14, 0.4) * min(1.0, length / 0.3 + 0.3)
    angle = rng.uniform(0, 2 * math.pi)
    paint = jitter(MOTOR_PAINTS[rng.integers(len(MOTOR_PAINTS))], rng, 12)

    def at(local: npt.ArrayLike) -> Points:
        return place(local, center, angle, px_per_m)

    cap = length * 0.13
    body = _rect(length, diameter)
    # chamfered corners read as a rounded housing from above
    ch = diameter * 0.12
    body = np.array(
        [
            [-length / 2 + ch, -diameter / 2],
            [length / 2 - ch, -diameter / 2],
            [length / 2, -diameter / 2 + ch],
            [length / 2, diameter / 2 - ch],
            [length / 2 - ch, diameter / 2],
            [-length / 2 + ch, diameter / 2],
            [-length / 2, diameter / 2 - ch],
            [-length / 2, -diameter / 2 + ch],
        ]
    )
    strokes = [Stroke(at(body), paint)]
    dark = scale_color(paint, 0.55)
    strokes.append(Stroke(at(_rect(cap, diameter * 0.96, x=-length / 2 + cap / 2)), dark))
    strokes.append(Stroke(at(_rect(cap, diameter * 0.96, x=length / 2 - cap / 2)), dark))
    line = _px(0.008, px_per_m)
    if rng.random() < 0.6:  # housing fins along the axis
        for y in np.linspace(-diameter * 0.38, diameter * 0.38, int(rng.integers(5, 10))):
            seg = np.array([[-length / 2 + cap, y], [length / 2 - cap, y]])
            strokes.append(Stroke(at(seg), scale_color(paint, 0.7), line, closed=False))
    else:  # broken housing: copper windings visible
        wl = (length - 2 * cap) * rng.uniform(0.4, 0.8)
        strokes.append(Stroke(at(_rect(wl, diameter * 0.7)), jitter(COPPER, rng, 15)))
        for x in np.linspace(-wl / 2, wl / 2, int(rng.integers(6, 14))):
            seg = np.array([[x, -diameter * 0.35], [x, diameter * 0.35]])
            strokes.append(Stroke(at(seg), scale_color(COPPER, 0.65), line, closed=False))
    shaft = _rect(length * 0.18, diameter * 0.16, x=length / 2 + length * 0.09)
    strokes.append(Stroke(at(shaft), (175, 178, 180)))
    box = _rect(length * 0.25, diameter * 0.3, x=rng.uniform(-0.1, 0.1) * length)
    strokes.append(Stroke(at(box), scale_color(paint, 1.15)))
    hi = np.array([[-length / 2 + cap, -diameter * 0.42], [length / 2 - cap, -diameter * 0.42]])
    strokes.append(Stroke(at(hi), scale_color(paint, 1.5), line, closed=False))
    return _piece(strokes)


def cable(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """An insulated cable: a long curving strand with bare copper at the ends.

    Its heading never turns through more than 160 degrees in all, so the strand cannot
    cross itself and its visible outline has no enclosed holes.
    """
    length = rng.uniform(0.6, 3.0)
    thick = rng.uniform(0.008, 0.028)
    step = 0.03
    n = max(3, int(length / step))
    heading0 = rng.uniform(0, 2 * math.pi)
    limit = math.radians(80)
    h = 0.0
    turn = 0.0
    headings = []
    for _ in range(n):
        turn = 0.85 * turn + rng.normal(0, 0.05)
        h = float(np.clip(h + turn, -limit, limit))
        headings.append(heading0 + h)
    d = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    path = np.vstack([[0.0, 0.0], np.cumsum(d, axis=0)])
    path -= path.mean(axis=0)
    pts = place(path, center, 0.0, px_per_m)
    color = jitter(INSULATION[rng.integers(len(INSULATION))], rng, 10)
    w = _px(thick, px_per_m)
    bare = max(2, int(rng.uniform(0.02, 0.07) / step))
    strokes = [
        Stroke(pts[bare:-bare], color, w, closed=False),
        Stroke(
            pts[bare:-bare],
            scale_color(color, 1.5) if sum(color) < 400 else scale_color(color, 0.8),
            max(1, w // 4),
            closed=False,
        ),
        Stroke(pts[: bare + 1], jitter(COPPER, rng, 15), max(1, int(w * 0.6)), closed=False),
        Stroke(pts[-bare - 1 :], jitter(COPPER, rng, 15), max(1, int(w * 0.6)), closed=False),
    ]
    return _piece(strokes)


def spray_can(rng: np.random.Generator, center: npt.ArrayLike, px_per_m: float) -> Piece:
    """An aerosol can lying on its side: printed label, shiny shoulder and a coloured cap."""
    length = rng.uniform(0.12, 0.25)
    diameter = rng.uniform(0.045, 0.075) * rng.uniform(0.85, 1.0)  # sometimes squashed
    angle = rng.uniform(0, 2 * math.pi)

    def at(local: npt.ArrayLike) -> Points:
        return place(local, center, angle, px_per_m)

    label = jitter(LABEL_COLORS[rng.integers(len(LABEL_COLORS))], rng, 15)
    second = LABEL_COLORS[rng.integers(len(LABEL_COLORS))]
    cap_color = jitter(LABEL_COLORS[rng.integers(len(LABEL_COLORS))], rng, 20)
    body_len = length * 0.78
    strokes = [
        Stroke(at(_rect(body_len, diameter, x=-length / 2 + body_len / 2)), label),
        Stroke(at(_rect(body_len * 0.3, diameter, x=-length / 2 + body_len * 0.55)), second),
        Stroke(
            at(_rect(length * 0.08, diameter * 0.8, x=-length / 2 + body_len + length * 0.04)),
            (190, 192, 195),
        ),
        Stroke(at(_rect(length * 0.14, diameter * 0.6, x=length / 2 - length * 0.07)), cap_color),
    ]
    hi = np.array([[-length / 2, -diameter * 0.25], [-length / 2 + body_len, -diameter * 0.25]])
    strokes.append(Stroke(at(hi), (235, 235, 235), _px(0.004, px_per_m), closed=False))
    return _piece(strokes)


CONTAMINANT_PAINTERS = (motor, cable, spray_can)
"""Painter of each anomaly class, in class-index order (motor = 1, cable = 2, spray_can = 3)."""
