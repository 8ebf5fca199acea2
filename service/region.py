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

import numpy as np
import numpy.typing as npt

from common.bundle import Bundle, RegionInfo
from common.imaging import CLIP_MEAN, CLIP_STD, polygon_mask
from common.regions import cut_region
from service.stages import Outlined

NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class Described:
    """What the region encoder says of one region."""

    description: str
    description_class: str
    verification: float
    """Best contaminant description's similarity minus the best plain one's."""
    verified: bool | None
    """Verification at or over the bundle's margin; None when the bundle sets none."""


class RegionCheck:
    """The bundle's region encoder, ready to describe regions of a decoded frame."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        info = bundle.manifest.region
        assert info is not None, "a bundle with a region encoder"
        self.info: RegionInfo = info
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(bundle.path(info.file)), options, providers=providers
        )
        self.texts = np.asarray(info.embeddings, np.float32)
        self.classes = [d.class_name for d in info.descriptions]
        self.normal = np.asarray([c == NORMAL for c in self.classes])
        self._mean = np.asarray(CLIP_MEAN, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1)

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
            rgb = crop[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
            out[k, :3] = ((rgb - self._mean) / self._std)[0]
            out[k, 3] = alpha.astype(np.float32) / 255
        return out

    def describe(
        self, frame_bgr: npt.NDArray[np.uint8], regions: Sequence[Outlined]
    ) -> list[Described]:
        """Each region's best description, its class and its verification."""
        if not regions:
            return []
        embedding = self.session.run(None, {"region": self.inputs(frame_bgr, regions)})[0]
        sims = np.asarray(embedding, np.float32) @ self.texts.T
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
