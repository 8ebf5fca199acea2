"""Each instance described and checked by the bundle's region encoder (common.bundle.RegionInfo).

An instance's crop and mask (common.regions, as the encoder was trained) go through
region.onnx on ONNX Runtime; the embedding is compared with the bundle's description
embeddings by cosine similarity. The best description, its class, and the verification
score (the best contaminant description's similarity minus the best plain-scrap one's)
go into the instance's result; below the bundle's `verify_margin` the instance is
unverified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from common.bundle import Bundle, RegionInfo
from common.imaging import normalize, polygon_mask
from common.regions import cut_region
from service.engine import ort_session
from service.matching import Outlined

NORMAL = "normal"
TOP = 5
"""Descriptions a describe request answers, best first."""
MAX_POINTS = 2000


class _Pointed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def points(self) -> list[tuple[float, float]]:
        """The region's corners in frame pixels."""
        raise NotImplementedError

    def outline(self, width: int, height: int) -> Region:
        """The region in a width x height frame; ValueError when it is not inside it."""
        points = self.points()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
            raise ValueError(f"the region must lie inside the {width}x{height} frame")
        x, y = int(min(xs)), int(min(ys))
        w, h = int(np.ceil(max(xs))) - x, int(np.ceil(max(ys))) - y
        if w < 1 or h < 1:
            raise ValueError("the region covers no pixel")
        return Region((x, y, w, h), points)


class PolygonIn(_Pointed):
    """A region a person outlines, in frame pixels."""

    polygon: Annotated[list[tuple[float, float]], Field(min_length=3, max_length=MAX_POINTS)] = (
        Field(description="its outline: at least three [x, y] corners")
    )

    def points(self) -> list[tuple[float, float]]:
        """The outline's corners."""
        return list(self.polygon)


class BoxIn(_Pointed):
    """A region a person draws a box around, in frame pixels."""

    box: tuple[float, float, float, float] = Field(
        description="[x0, y0, x1, y1]", examples=[[600, 300, 700, 380]]
    )

    def points(self) -> list[tuple[float, float]]:
        """The box's corners."""
        x0, y0, x1, y1 = self.box
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


DescribeIn = PolygonIn | BoxIn
"""What POST /v1/frames/{id}/describe takes: an outline or a box."""


@dataclass(frozen=True, slots=True)
class Region:
    """A region in frame pixels: its box and outline (what service.matching.Outlined asks)."""

    bbox: tuple[int, int, int, int]
    polygon: list[tuple[float, float]]


class Ranked(BaseModel):
    """A description and how near the region is to it."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    text: str
    class_name: str = Field(alias="class")
    similarity: float


class Description(BaseModel):
    """What the region encoder says of a region."""

    descriptions: list[Ranked] = Field(description=f"the {TOP} nearest, best first")
    description_class: str
    verification: float
    verified: bool | None = Field(description="null when the bundle sets no margin")


@dataclass(frozen=True, slots=True)
class Described:
    """What the region encoder says of one region."""

    description: str
    description_class: str
    verification: float
    """Best contaminant description's similarity minus the best plain one's."""
    verified: bool | None
    """Verification at or over the bundle's margin; None when the bundle sets none."""


class Embeddings(NamedTuple):
    """What the region encoder answers for a batch of regions."""

    embedding: npt.NDArray[np.float32]
    """(N, D), L2-normalised."""


class RegionCheck:
    """The bundle's region encoder, ready to describe regions of a decoded frame.

    It is also an engine for a Batcher (`infer`), so that the instances of frames in flight
    share its batches as their tiles share the model's.
    """

    name = "region"

    def __init__(
        self, bundle: Bundle, device: str = "auto", threads: int = 0, max_batch: int = 32
    ) -> None:
        info = bundle.manifest.region
        assert info is not None, "a bundle with a region encoder"
        self.info: RegionInfo = info
        self.max_batch = max_batch
        self.session = ort_session(bundle.path(info.file), device, threads)
        self.texts = np.asarray(info.embeddings, np.float32)
        self.classes = [d.class_name for d in info.descriptions]
        self.normal = np.asarray([c == NORMAL for c in self.classes])

    def inputs(
        self, frame_bgr: npt.NDArray[np.uint8], regions: Sequence[Outlined]
    ) -> npt.NDArray[np.float32]:
        """(N, 4, S, S): each region's crop, CLIP-normalised RGB, and its mask in [0, 1]."""
        i = self.info
        out = np.zeros((len(regions), 4, i.input_size, i.input_size), np.float32)
        for k, r in enumerate(regions):
            x, y, w, h = r.bbox
            shifted = [(px - x, py - y) for px, py in r.polygon]
            pixels = polygon_mask(shifted, h, w) if len(shifted) >= 3 else np.ones((h, w), bool)
            crop, alpha = cut_region(frame_bgr, r.bbox, pixels, i.input_size, i.context, i.min_crop)
            normalize(crop, out=out[k, :3], bgr=True)
            out[k, 3] = alpha.astype(np.float32) / 255
        return out

    def infer(
        self, regions: npt.NDArray[np.float32], text: npt.NDArray[np.float32] | None = None
    ) -> Embeddings:
        """The embeddings of (N, 4, S, S) `inputs` (`text` is the batcher's; unused)."""
        return Embeddings(np.asarray(self.session.run(None, {"region": regions})[0], np.float32))

    def similarities(
        self, frame_bgr: npt.NDArray[np.uint8], regions: Sequence[Outlined]
    ) -> npt.NDArray[np.float32]:
        """(N, descriptions) cosine similarity of each region to each description."""
        return self.against_texts(self.infer(self.inputs(frame_bgr, regions)).embedding)

    def against_texts(self, embedding: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(N, descriptions) cosine similarity of (N, D) embeddings to each description."""
        return np.asarray(embedding @ self.texts.T, np.float32)

    def rank(self, frame_bgr: npt.NDArray[np.uint8], region: Outlined) -> Description:
        """One region's nearest descriptions and its verification (a describe request)."""
        all_sims = self.similarities(frame_bgr, [region])
        (said,) = self.said(all_sims)
        sims = all_sims[0]
        order = np.argsort(-sims)[:TOP]
        return Description(
            descriptions=[
                Ranked(
                    text=self.info.descriptions[k].text,
                    class_name=self.classes[k],
                    similarity=round(float(sims[k]), 4),
                )
                for k in order
            ],
            description_class=said.description_class,
            verification=said.verification,
            verified=said.verified,
        )

    def describe(
        self, frame_bgr: npt.NDArray[np.uint8], regions: Sequence[Outlined]
    ) -> list[Described]:
        """Each region's best description, its class and its verification."""
        if not regions:
            return []
        return self.said(self.similarities(frame_bgr, regions))

    def said(self, sims: npt.NDArray[np.float32]) -> list[Described]:
        """Per region (a row of `against_texts`), what the encoder says of it."""
        margin = sims[:, ~self.normal].max(axis=1) - sims[:, self.normal].max(axis=1)
        best = sims.argmax(axis=1)
        least = self.info.verify_margin
        return [
            Described(
                self.info.descriptions[b].text,
                self.classes[b],
                round(float(m), 4),
                None if least is None else bool(m >= least),
            )
            for b, m in zip(best, margin, strict=True)
        ]
