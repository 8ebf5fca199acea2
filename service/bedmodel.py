"""The learned bed cropper of a bundle (bed.onnx) run with ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from common.bed import bed_input, mask_polygon
from common.bundle import Bundle


class LearnedBed:
    """Finds the bed polygon of a frame from its downscaled copy."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        import onnxruntime as ort

        info = bundle.manifest.bed_model
        if info is None:
            raise ValueError(
                f"{bundle.root}: a camera uses bed: learned, but the bundle has no bed model "
                "(export it with scrapscan-export --bed-model)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(bundle.path(info.file)), options, providers=["CPUExecutionProvider"]
        )
        self.threshold = info.threshold

    def polygon(self, frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64] | None:
        """The bed outline in frame pixels, or None when the model sees no bed."""
        x = bed_input(frame_bgr)[None]
        prob = np.asarray(self.session.run(None, {"images": x})[0])[0, 0]
        h, w = frame_bgr.shape[:2]
        return mask_polygon(prob, w, h, self.threshold)
