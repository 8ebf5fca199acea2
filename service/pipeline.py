"""One frame's path, top to bottom.

decode, bed crop, tiles, engine (batched), merge, instances, result files. CPU-heavy
stages run in threads so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from common.bundle import Bundle
from common.inputs import make_tiles
from common.overlay import TEXT_CLASS_COLOR_BGR, class_color, draw_overlay
from service.batcher import Batcher
from service.decode import decode
from service.engine import EngineOutput
from service.heatmap import MAPS, encode_maps
from service.live import LiveSettings, SettingsChange
from service.region import Embeddings, RegionCheck
from service.result import (
    BedUsed,
    FrameResult,
    ImageSize,
    Instance,
    ModelRef,
    Thresholds,
    Verdict,
    frame_verdict,
    that_count,
)
from service.settings import CameraBed, Settings
from service.stages import (
    Bed,
    BedFinder,
    Findings,
    InstanceRule,
    Merged,
    bed_crop,
    find_instances,
    merge,
)
from service.stages import Instance as StageInstance
from service.zeroshot import PromptError, TextClass, TextRule, TextTower

log = logging.getLogger("scrapscan.pipeline")

DEFAULT_REJECT_SCORE = 0.8
"""The reject score when neither the settings nor the bundle give one."""


@dataclass(slots=True)
class Analysis:
    """A frame through every stage up to its instances (what evaluation reads too)."""

    frame: npt.NDArray[np.uint8]
    """(H, W, 3) uint8 BGR, as decoded."""
    bed: Bed
    tiles: int
    merged: Merged
    findings: Findings
    timer: Timer


@dataclass(slots=True)
class Processed:
    """A finished frame: its result and its files (mask.png, overlay.jpg)."""

    result: FrameResult
    files: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Rules:
    """What turns a frame's maps into instances and a verdict, as set now."""

    instance: InstanceRule
    reject_score: float
    cameras: Mapping[str, CameraBed]
    """Per camera, how its bed is found (others: settings.default_bed)."""
    version: int | None
    """The live settings' version over the bundle's and the service's; None: none."""
    text: TextRule | None = None
    """The classes defined by text that frames are scored with (None: none)."""


class Timer:
    """Seconds per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Close the stage that just ended."""
        now = time.perf_counter()
        self.ms[stage] = round((now - self._t) * 1000, 2)
        self._t = now


LABELS = 8
DESCRIPTION_CHARS = 40
"""The longest description drawn under an instance's label (longer ones are cut)."""


def _label(inst: StageInstance, said: Instance | None) -> list[str]:
    """The lines of an instance's label: class and score, then what the region encoder says."""
    first = f"{inst.class_name} {inst.score:.2f}" + (" (text)" if inst.zero_shot else "")
    if said is None or said.description is None:
        return [first]
    if said.verified is False:
        first += " unverified"
    text = said.description
    if len(text) > DESCRIPTION_CHARS:
        text = text[: DESCRIPTION_CHARS - 3].rstrip() + "..."
    return [first, text]


def _place_label(
    size: tuple[int, int],
    x: int,
    above: int,
    below: int,
    frame: tuple[int, int],
    placed: Sequence[tuple[int, int, int, int]],
) -> tuple[int, int]:
    """Where a label of `size` (width, height) goes: its left and top corner.

    Whole inside the `frame` (height, width), at the instance box's left edge `x` (moved
    left at the frame's right edge), and clear of the labels `placed` before it (x, y,
    width, height): just above the box's top `above`, else just below its bottom
    `below`, else stacked further above or below; where all of those collide (a crowded
    frame), just above.
    """
    (w, h), (fh, fw) = size, frame
    x = max(0, min(x, fw - w))
    tops = [above - h, below]
    for k in range(1, LABELS):
        tops += [above - h * (k + 1), below + h * k]
    for top in (max(0, min(t, fh - h)) for t in tops):
        if not any(
            x < px + pw and px < x + w and top < py + ph and py < top + h
            for px, py, pw, ph in placed
        ):
            return x, top
    return x, max(0, min(above - h, fh - h))


def render_overlay(
    frame: npt.NDArray[np.uint8],
    findings: Findings,
    bed: Bed,
    classes: tuple[str, ...],
    max_side: int = 1920,
    said: Sequence[Instance] | None = None,
) -> npt.NDArray[np.uint8]:
    """The frame with instances tinted and outlined; the strongest labelled.

    A label gives the class and score and, when `said` (the result's instances, in the
    same order) carries the region encoder's description, that description and whether
    the instance is unverified. Drawn on the frame scaled down to at most `max_side`
    pixels on its longer side. At most LABELS labels (instances come strongest first), so
    a frame with many weak regions stays readable, each placed whole in the frame and
    clear of the others where there is room (`_place_label`).
    """
    h, w = frame.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), np.uint8)
        mask = np.asarray(
            cv2.resize(findings.class_mask, size, interpolation=cv2.INTER_NEAREST), np.uint8
        )
    else:
        mask = findings.class_mask
    out = draw_overlay(frame, mask, np.asarray(bed.polygon) * f)
    scale = max(0.6, min(frame.shape[:2]) / 900)
    thick = max(1, round(scale * 2))
    font = cv2.FONT_HERSHEY_SIMPLEX
    placed: list[tuple[int, int, int, int]] = []
    for k, inst in enumerate(findings.instances[:LABELS]):
        x, y = round(inst.bbox[0] * f), round(inst.bbox[1] * f)
        below = round((inst.bbox[1] + inst.bbox[3]) * f)
        color = (
            TEXT_CLASS_COLOR_BGR if inst.zero_shot else class_color(classes.index(inst.class_name))
        )
        lines = _label(inst, said[k] if said is not None else None)
        sizes = [cv2.getTextSize(t, font, scale, thick) for t in lines]
        step = max(th + base for (_, th), base in sizes) + 4
        box = (max(tw for (tw, _), _ in sizes) + 6, step * len(lines))
        x, top = _place_label(box, x, y, below, out.shape[:2], placed)
        placed.append((x, top, *box))
        cv2.rectangle(out, (x, top), (x + box[0], top + box[1]), (0, 0, 0), -1)
        for n, (text, ((_, th), _)) in enumerate(zip(lines, sizes, strict=True)):
            shade = color if n == 0 else (235, 235, 235)
            at = (x + 3, top + n * step + th + 2)
            cv2.putText(out, text, at, font, scale, shade, thick, cv2.LINE_AA)
    return out


@dataclass(eq=False)
class Pipeline:
    """Turns a frame's bytes into its result, sharing the engine through the batcher."""

    bundle: Bundle
    batcher: Batcher[EngineOutput]
    settings: Settings
    bed_finder: BedFinder | None = None
    region: RegionCheck | None = None
    """The bundle's region encoder, when it has one: describes and checks instances."""
    region_batcher: Batcher[Embeddings] | None = None
    """Its batcher: the instances of the frames in flight share its batches."""
    text_tower: TextTower | None = None
    """The bundle's text tower, when it has one: encodes the classes defined by text."""
    sigma: float = field(init=False)
    """The maps' smoothing in frame pixels (the bundle's is in model-input pixels)."""
    rules: Rules = field(init=False)
    """The thresholds and verdict rules in force (the live settings over the bundle's)."""

    def __post_init__(self) -> None:
        m = self.bundle.manifest
        self.sigma = m.postprocess.sigma * m.tile_size / m.input_size
        self.rules = self.rules_for(None)

    @property
    def classes(self) -> tuple[str, ...]:
        """The bundle's classes, normal first."""
        return self.bundle.manifest.classes

    def rules_for(self, live: SettingsChange | None) -> Rules:
        """The bundle's postprocess and the service's settings, with `live` over them."""
        m, s = self.bundle.manifest, self.settings
        post = m.postprocess
        given = live.settings if live is not None else LiveSettings()
        per_class = post.class_thresholds
        if given.thresholds():
            base, new = per_class or {}, given.thresholds()
            per_class = {c: new.get(c, base.get(c, post.pixel_threshold)) for c in m.classes[1:]}
        rule = InstanceRule(
            post.pixel_threshold,
            post.min_area_px,
            post.max_bed_fraction,
            None if per_class is None else tuple(per_class[c] for c in m.classes[1:]),
            post.min_score if given.min_score is None else given.min_score,
        )
        reject = (given.reject_score, s.reject_score, post.reject_score, DEFAULT_REJECT_SCORE)
        return Rules(
            rule,
            next(v for v in reject if v is not None),
            {**s.cameras, **given.cameras},
            None if live is None else live.version,
            self._text_rule(given.text_classes or ()),
        )

    def _text_rule(self, classes: tuple[TextClass, ...]) -> TextRule | None:
        """The classes defined by text as this bundle scores them (none without a text tower)."""
        if not classes:
            return None
        if self.text_tower is None:
            log.warning(
                "%d classes defined by text are not scored: bundle %s has no text tower "
                "(export it with scrapscan-export --zero-shot-slots K)",
                len(classes),
                self.bundle,
            )
            return None
        try:
            text = self.text_tower.rule(classes)
        except PromptError as err:  # registered through another bundle's tokenizer
            log.error("classes defined by text not scored: %s", err)
            return None
        if text is not None and text.registered > len(text.names):
            log.warning(
                "%d classes defined by text, the bundle scores %d: %s are not scored",
                text.registered,
                len(text.names),
                ", ".join(c.name for c in classes[len(text.names) :]),
            )
        return text

    def use(self, live: SettingsChange | None) -> None:
        """Apply a version of the live settings to the frames that start from now on."""
        self.rules = self.rules_for(live)

    async def stop(self) -> None:
        """Stop the batchers (frames still waiting on them get a RuntimeError)."""
        await self.batcher.stop()
        if self.region_batcher is not None:
            await self.region_batcher.stop()

    @property
    def rule(self) -> InstanceRule:
        """The instance rule in force."""
        return self.rules.instance

    @property
    def reject_score(self) -> float:
        """The reject score in force."""
        return self.rules.reject_score

    def verdict(self, findings: Findings, rules: Rules | None = None) -> Verdict:
        """The frame's verdict under the reject score in force (or of `rules`)."""
        score = (rules or self.rules).reject_score
        return frame_verdict([i.score for i in findings.instances], score)

    async def analyse(self, data: bytes, camera_id: str, rules: Rules | None = None) -> Analysis:
        """Every stage up to the instances: what a frame's result is made from."""
        m = self.bundle.manifest
        rules = rules or self.rules
        timer = Timer()
        frame = await asyncio.to_thread(decode, data, self.settings.max_pixels)
        timer.lap("decode")
        bed_setting = rules.cameras.get(camera_id, self.settings.default_bed)
        bed = await asyncio.to_thread(bed_crop, frame, bed_setting, self.bed_finder)
        timer.lap("crop")
        tiles, inputs = await asyncio.to_thread(
            make_tiles, frame, bed.box, m.tile_size, m.overlap, m.input_size, m.mean, m.std
        )
        timer.lap("tile")
        text = rules.text
        out = await self.batcher.infer(inputs, None if text is None else text.text)
        timer.lap("infer")
        merged = await asyncio.to_thread(
            merge,
            frame.shape,
            bed,
            tiles,
            out.anomaly,
            out.class_probs,
            m.overlap,
            self.sigma,
            self.settings.map_stride,
            None if text is None else out.zero_shot[:, : len(text.names)],
            m.postprocess.refine,
            frame,
        )
        timer.lap("merge")
        findings = await asyncio.to_thread(
            find_instances, merged, bed, self.classes, rules.instance, text
        )
        timer.lap("postprocess")
        return Analysis(frame, bed, len(tiles), merged, findings, timer)

    async def process(self, data: bytes, camera_id: str) -> Processed:
        """Run every stage on one upload."""
        m, rules = self.bundle.manifest, self.rules  # one frame, one set of rules
        a = await self.analyse(data, camera_id, rules)
        frame, bed, findings, timer = a.frame, a.bed, a.findings, a.timer
        instances = [i.result() for i in findings.instances]
        region = self.region.info if self.region is not None else None
        if self.region is not None and self.region_batcher is not None and instances:
            crops = await asyncio.to_thread(self.region.inputs, frame, findings.instances)
            embedded = await self.region_batcher.infer(crops)
            said = self.region.said(self.region.against_texts(embedded.embedding))
            instances = [
                i.model_copy(update=dataclasses.asdict(d))
                for i, d in zip(instances, said, strict=True)
            ]
            timer.lap("describe")
        # the mask's PNG, the overlay's drawing and JPEG and the maps' PNG in threads (OpenCV
        # lets go of the GIL): the frame's answer waits for the longest, not their sum
        merged = a.merged
        mask_png, overlay_jpg, maps_png = await asyncio.gather(
            asyncio.to_thread(_encode, ".png", findings.class_mask),
            asyncio.to_thread(self._overlay_jpg, frame, findings, bed, instances),
            asyncio.to_thread(encode_maps, merged.anomaly, merged.classes, merged.bed_mask),
        )
        files = {"mask.png": mask_png, "overlay.jpg": overlay_jpg, MAPS: maps_png}
        timer.lap("encode")
        text = rules.text
        thresholds = Thresholds(
            **rules.instance.describe(rules.reject_score),
            text_classes={}
            if text is None
            else dict(zip(text.names, text.thresholds, strict=True)),
            verify_margin=region.verify_margin if region is not None else None,
            drop_unverified=region is not None and region.drop_unverified,
            refine=m.postprocess.refine,
            flips=m.postprocess.flips,
        )
        h, w = frame.shape[:2]
        result = FrameResult(
            model=ModelRef(name=m.model.name, version=m.model.version),
            image=ImageSize(width=w, height=h),
            bed=BedUsed(
                strategy=bed.strategy,
                polygon=[(round(float(x), 1), round(float(y), 1)) for x, y in bed.polygon],
            ),
            verdict=frame_verdict(
                [i.score for i in that_count(instances, thresholds.drop_unverified)],
                rules.reject_score,
            ),
            scores={k: round(v, 4) for k, v in findings.frame_scores.items()},
            instances=instances,
            thresholds=thresholds,
            settings_version=rules.version,
            tiles=a.tiles,
            timings_ms=timer.ms,
        )
        return Processed(result, files)

    def _overlay_jpg(
        self,
        frame: npt.NDArray[np.uint8],
        findings: Findings,
        bed: Bed,
        instances: Sequence[Instance],
    ) -> bytes:
        overlay = render_overlay(
            frame, findings, bed, self.classes, self.settings.overlay_max_side, instances
        )
        return _encode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, 85])


def _encode(ext: str, image: npt.NDArray[np.uint8], params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(ext, image, params or [])
    if not ok:
        raise RuntimeError(f"could not encode the result image as {ext}")
    return data.tobytes()
