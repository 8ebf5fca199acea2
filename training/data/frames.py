"""Labelled crane frames from disk: a COCO file or an images/ + masks/ folder pair.

Both layouts load into the same in-memory form, a `FrameSet` of `FrameRecord`s. Loading
checks everything it can without decoding whole images and reports every problem it
finds, each with the file and the reason, in one `DataError`; nothing is skipped
silently. Layouts (see DESIGN.md):

    DIR/images/<name>.jpg|png   frames
    DIR/masks/<name>.png        8-bit class index per pixel (0 normal, 1..3 anomalies)
    DIR/annotations.json        COCO: categories named motor, cable, spray_can; instance
                                polygons or RLE; per image a truck-bed polygon, as an
                                image field "bed_polygon" or an annotation of category
                                "truck_bed"

With annotations.json the masks/ folder is optional (masks are then drawn from the
instances); without it, every image needs a mask and the whole frame counts as bed.

Longer than the project's 400 lines for a module: its one job is reading both layouts
with every check a yard's data needs (each problem named with its file), and the checks
share the records they fill.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from common.classes import CLASS_NAMES, IGNORE_INDEX, class_index
from common.tiling import Box, polygon_box
from training.data.coco import segmentation_to_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BED_CATEGORY_NAMES = ("truck_bed", "bed", "truck bed")
EDGE_TOLERANCE = 1.0
"""Polygon vertices may lie this many pixels outside the image (tools round outwards)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a data set: the file it is in and what is wrong."""

    file: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class DataError(Exception):
    """A data set has problems; `problems` lists each with its file and reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


@dataclass(frozen=True, slots=True)
class LabelledInstance:
    """One annotated contaminant: class index 1..3 and its COCO segmentation."""

    annotation_id: int
    class_index: int
    segmentation: Any
    bbox: tuple[float, float, float, float]
    area: float


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One labelled frame. Images are read on demand; sizes are as displayed (EXIF applied)."""

    name: str
    image_path: Path
    width: int
    height: int
    instances: tuple[LabelledInstance, ...] = ()
    bed_polygon: npt.NDArray[np.float64] | None = None
    mask_path: Path | None = None

    def load_image(self) -> npt.NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB, EXIF orientation applied. Raises OSError if unreadable."""
        bgr = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"{self.image_path}: cannot decode image")
        return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)

    def load_mask(self) -> npt.NDArray[np.uint8]:
        """(H, W) uint8 class indices: the mask file, or the instances drawn in order."""
        if self.mask_path is not None:
            mask = cv2.imread(str(self.mask_path), cv2.IMREAD_UNCHANGED)
            if mask is None:
                raise OSError(f"{self.mask_path}: cannot decode mask")
            return np.asarray(mask, dtype=np.uint8)
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for inst in self.instances:
            out[segmentation_to_mask(inst.segmentation, self.height, self.width)] = inst.class_index
        return out

    def bed_box(self, margin: int = 0) -> Box:
        """The bed's bounding box grown by `margin`, or the whole frame when there is no bed."""
        if self.bed_polygon is None:
            return Box(0, 0, self.width, self.height)
        return polygon_box(self.bed_polygon, self.width, self.height, margin)


@dataclass(frozen=True, slots=True)
class FrameSet:
    """The frames of one data folder; `layout` is "coco" or "folders"."""

    root: Path
    layout: str
    frames: tuple[FrameRecord, ...]

    def instance_counts(self) -> dict[str, int]:
        """Number of annotated instances per anomaly class (0 for the folder layout)."""
        counts = dict.fromkeys(CLASS_NAMES[1:], 0)
        for f in self.frames:
            for inst in f.instances:
                counts[CLASS_NAMES[inst.class_index]] += 1
        return counts


# --- images ------------------------------------------------------------------------------


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, from the header; raises OSError when unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
            fmt = img.format
    except (UnidentifiedImageError, OSError) as err:
        raise OSError(f"unreadable image ({err.__class__.__name__}: {err})") from err
    if fmt not in ("JPEG", "PNG", "MPO"):
        raise OSError(f"unsupported image format {fmt}; use JPEG or PNG")
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees for display
        width, height = height, width
    return width, height


def _check_decodes(path: Path, problems: list[Problem]) -> None:
    # PIL, not OpenCV: OpenCV fills a truncated JPEG with grey and only warns. A JPEG is
    # decoded at 1/8 scale, which still reads all of its data.
    try:
        with Image.open(path) as img:
            img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError) as err:
        problems.append(Problem(path, f"image data cannot be decoded ({err})"))


def _check_mask(path: Path, width: int, height: int, problems: list[Problem]) -> None:
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
    except (UnidentifiedImageError, OSError) as err:
        problems.append(Problem(path, f"unreadable mask ({err})"))
        return
    if size != (width, height):
        problems.append(
            Problem(path, f"mask is {size[0]}x{size[1]} but its image is {width}x{height}")
        )
        return
    if mode not in ("L", "P"):
        problems.append(Problem(path, f"mask must be 8-bit single-channel, got mode {mode}"))
        return
    values = np.unique(np.asarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))
    bad = [int(v) for v in values if v >= len(CLASS_NAMES) and v != IGNORE_INDEX]
    if bad:
        problems.append(
            Problem(
                path,
                f"mask holds value(s) {bad[:5]}; class indices are 0..{len(CLASS_NAMES) - 1} "
                f"(and {IGNORE_INDEX} for unlabelled pixels)",
            )
        )


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


# --- loading -------------------------------------------------------------------------------


def load_frames(root: Path | str, decode: bool = False) -> FrameSet:
    """Load and check the data folder `root` (or a COCO json file inside one).

    decode: also decode every image fully to catch truncated files (slow for 4K frames).
    Raises DataError listing every problem found, FileNotFoundError if `root` is missing.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        return _load_coco(root.parent, root, decode)
    if (root / "annotations.json").is_file():
        return _load_coco(root, root / "annotations.json", decode)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _load_folders(root, decode)
    raise DataError([Problem(root, "neither annotations.json nor images/ + masks/ folders found")])


def _load_folders(root: Path, decode: bool) -> FrameSet:
    problems: list[Problem] = []
    images = _images_in(root / "images")
    masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if p.is_file()}
    frames = []
    for stem, path in images.items():
        mask = masks.get(stem)
        if mask is None:
            problems.append(Problem(path, f"no mask masks/{stem}.png for this image"))
            continue
        if mask.suffix.lower() != ".png":
            problems.append(Problem(mask, "masks must be PNG (JPEG would change class values)"))
            continue
        try:
            width, height = read_image_size(path)
        except OSError as err:
            problems.append(Problem(path, str(err)))
            continue
        if decode:
            _check_decodes(path, problems)
        _check_mask(mask, width, height, problems)
        frames.append(FrameRecord(stem, path, width, height, mask_path=mask))
    problems.extend(
        Problem(m, "mask without an image in images/")
        for stem, m in masks.items()
        if stem not in images
    )
    if not images:
        problems.append(Problem(root / "images", "no JPEG or PNG images"))
    if problems:
        raise DataError(problems)
    return FrameSet(root, "folders", tuple(frames))


def _load_coco(root: Path, ann_file: Path, decode: bool) -> FrameSet:
    try:
        coco = json.loads(ann_file.read_text())
    except json.JSONDecodeError as err:
        raise DataError([Problem(ann_file, f"not valid JSON: {err}")]) from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError([Problem(ann_file, f"cannot read: {err}")]) from err
    if not isinstance(coco, dict):
        raise DataError([Problem(ann_file, "top level must be a JSON object")])
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)
    ]
    if missing:
        raise DataError([Problem(ann_file, f"missing or not a list: {', '.join(missing)}")])

    problems: list[Problem] = []
    categories, bed_ids = _categories(coco["categories"], ann_file, problems)
    masks_dir = root / "masks" if (root / "masks").is_dir() else None

    images: dict[int, dict[str, Any]] = {}
    for img in coco["images"]:
        where = (
            f"image {img.get('id')!r} ({img.get('file_name')!r})"
            if isinstance(img, dict)
            else "image"
        )
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= img.keys():
            problems.append(Problem(ann_file, f"{where}: needs id, file_name, width and height"))
            continue
        if img["id"] in images:
            problems.append(Problem(ann_file, f"{where}: duplicate image id"))
            continue
        images[img["id"]] = img

    by_image: dict[int, list[LabelledInstance]] = {i: [] for i in images}
    beds: dict[int, list[Any]] = {}
    for ann in coco["annotations"]:
        _annotation(ann, ann_file, images, categories, bed_ids, by_image, beds, problems)

    frames = []
    for image_id, img in images.items():
        record = _image_record(
            root, ann_file, img, by_image[image_id], beds.get(image_id), masks_dir, decode, problems
        )
        if record is not None:
            frames.append(record)
    if not images:
        problems.append(Problem(ann_file, "no images listed"))
    if problems:
        raise DataError(problems)
    return FrameSet(root, "coco", tuple(frames))


def _categories(
    cats: list[Any], ann_file: Path, problems: list[Problem]
) -> tuple[dict[int, int], set[int]]:
    """Map COCO category ids to class indices by name; ids of the bed category apart."""
    out: dict[int, int] = {}
    bed: set[int] = set()
    for cat in cats:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(Problem(ann_file, f"category {cat!r}: needs id and name"))
            continue
        name = str(cat["name"])
        if name.strip().lower() in BED_CATEGORY_NAMES:
            bed.add(cat["id"])
            continue
        try:
            out[cat["id"]] = class_index(name)
        except KeyError as err:
            problems.append(
                Problem(
                    ann_file,
                    f"category {cat['id']} {name!r}: unknown category; {err.args[0]} "
                    f"(or {BED_CATEGORY_NAMES[0]} for the bed polygon)",
                )
            )
    return out, bed


def _annotation(
    ann: Any,
    ann_file: Path,
    images: dict[int, dict[str, Any]],
    categories: dict[int, int],
    bed_ids: set[int],
    by_image: dict[int, list[LabelledInstance]],
    beds: dict[int, list[Any]],
    problems: list[Problem],
) -> None:
    if (
        not isinstance(ann, dict)
        or not {"id", "image_id", "category_id", "segmentation"} <= ann.keys()
    ):
        problems.append(
            Problem(
                ann_file,
                f"annotation {ann.get('id') if isinstance(ann, dict) else ann!r}: "
                "needs id, image_id, category_id and segmentation",
            )
        )
        return
    where = f"annotation {ann['id']}"
    img = images.get(ann["image_id"])
    if img is None:
        problems.append(
            Problem(ann_file, f"{where}: image_id {ann['image_id']!r} is not listed in images")
        )
        return
    cat = ann["category_id"]
    if cat in bed_ids:
        beds.setdefault(ann["image_id"], []).append(ann["segmentation"])
        return
    if cat not in categories:
        problems.append(Problem(ann_file, f"{where}: unknown category id {cat!r}"))
        return
    reason = _segmentation_problem(ann["segmentation"], int(img["width"]), int(img["height"]))
    if reason:
        problems.append(Problem(ann_file, f"{where} in {img['file_name']}: {reason}"))
        return
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    by_image[ann["image_id"]].append(
        LabelledInstance(
            int(ann["id"]),
            categories[cat],
            ann["segmentation"],
            (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
            float(ann.get("area", 0.0)),
        )
    )


def _segmentation_problem(seg: Any, width: int, height: int) -> str | None:
    """Why `seg` is not a usable segmentation of a width x height image, or None."""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "RLE segmentation needs counts and size"
        if list(seg["size"]) != [height, width]:
            return f"RLE size {seg['size']} differs from the image's [{height}, {width}]"
        return None
    if not isinstance(seg, list) or not seg:
        return "segmentation must be a non-empty list of polygons or an RLE dict"
    for poly in seg:
        if (
            not isinstance(poly, list)
            or len(poly) < 6
            or len(poly) % 2
            or not all(isinstance(v, int | float) for v in poly)
        ):
            return "a polygon must be a flat list of at least three x, y pairs"
    return _outside(np.asarray([v for p in seg for v in p], dtype=np.float64), width, height)


def _outside(flat: npt.NDArray[np.float64], width: int, height: int) -> str | None:
    xs, ys = flat[0::2], flat[1::2]
    t = EDGE_TOLERANCE
    if xs.min() < -t or ys.min() < -t or xs.max() > width + t or ys.max() > height + t:
        return (
            f"polygon outside the {width}x{height} image (x {xs.min():.1f}..{xs.max():.1f}, "
            f"y {ys.min():.1f}..{ys.max():.1f})"
        )
    return None


def _bed_polygon(
    img: dict[str, Any], bed_segs: list[Any] | None, ann_file: Path, problems: list[Problem]
) -> npt.NDArray[np.float64] | None:
    where = f"image {img['id']} ({img['file_name']})"
    flat: Iterable[Any] | None = img.get("bed_polygon")
    if bed_segs:
        if len(bed_segs) > 1 or not isinstance(bed_segs[0], list) or len(bed_segs[0]) != 1:
            problems.append(Problem(ann_file, f"{where}: the truck bed must be one polygon"))
            return None
        flat = bed_segs[0][0]
    if flat is None:
        return None
    values = list(flat)
    if len(values) < 6 or len(values) % 2 or not all(isinstance(v, int | float) for v in values):
        problems.append(
            Problem(ann_file, f"{where}: bed polygon must be at least three x, y pairs")
        )
        return None
    arr = np.asarray(values, dtype=np.float64)
    reason = _outside(arr, int(img["width"]), int(img["height"]))
    if reason:
        problems.append(Problem(ann_file, f"{where}: bed {reason}"))
        return None
    return arr.reshape(-1, 2)


def _image_record(
    root: Path,
    ann_file: Path,
    img: dict[str, Any],
    instances: list[LabelledInstance],
    bed_segs: list[Any] | None,
    masks_dir: Path | None,
    decode: bool,
    problems: list[Problem],
) -> FrameRecord | None:
    rel = Path(str(img["file_name"]))
    candidates = [root / "images" / rel, root / rel, root / "images" / rel.name]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        problems.append(
            Problem(
                ann_file, f"image {img['id']}: file {rel} not found in {root / 'images'} or {root}"
            )
        )
        return None
    try:
        width, height = read_image_size(path)
    except OSError as err:
        problems.append(Problem(path, str(err)))
        return None
    if (width, height) != (int(img["width"]), int(img["height"])):
        problems.append(
            Problem(
                path,
                f"image is {width}x{height} but {ann_file.name} says "
                f"{img['width']}x{img['height']}",
            )
        )
        return None
    if decode:
        _check_decodes(path, problems)
    mask_path = None
    if masks_dir is not None:
        mask_path = masks_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            problems.append(
                Problem(path, f"masks/ exists but holds no {mask_path.name} for this image")
            )
            return None
        _check_mask(mask_path, width, height, problems)
    bed = _bed_polygon(img, bed_segs, ann_file, problems)
    return FrameRecord(path.stem, path, width, height, tuple(instances), bed, mask_path)
