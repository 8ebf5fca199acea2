"""scrapscan-iap-as: the service with the IAP-AS zero-shot pipeline in place of the model.

    scrapscan-iap-as serve --config CONFIG --report REPORT [scrapscan-serve's arguments]
    scrapscan-iap-as worker --config CONFIG --report REPORT [scrapscan-worker's arguments]

A yard without labelled frames can run the service on IAP-AS (training/iapas.py):
Grounding DINO boxes for the contaminant classes' prompts, SAM masks in them. Stage 1
(tags, prompts, size threshold) comes from REPORT, the report.json of a `scrapscan-eval
--iap-as CONFIG` run on the yard's frames, so that the service repeats what was judged
there. Everything else is the service as it is: the bundle (SCRAPSCAN_BUNDLE or --bundle)
gives the classes, the tiling, the bed model and the thresholds (set thresholds for the
IAP-AS maps with PUT /v1/admin/settings: the bundle's were chosen for its own model), and
each tile's maps are brought to the bundle's grid like the model's. This command plugs
the engine in (SCRAPSCAN_ENGINE=iap-as) and runs scrapscan-serve or scrapscan-worker in
this process; the service itself never imports torch or transformers for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from common.bundle import Bundle
from common.cli import command
from service.engine import Array, EngineOutput, plug_engine
from training.config import ConfigError
from training.iapas import IAPAS, IAPASConfig, load_iapas_config, read_stage_one
from training.model import WeightsError


class IAPASEngine:
    """IAP-AS as an engine: (N, 3, S, S) tiles in, the bundle's outputs at its grid out."""

    def __init__(self, pipeline: IAPAS, bundle: Bundle, max_batch: int = 4) -> None:
        self.pipeline = pipeline
        m = bundle.manifest
        self.grid = m.grid
        self.slots = 0 if m.zero_shot is None else m.zero_shot.slots
        self.name = "iap-as"
        self.max_batch = max_batch

    def _to_grid(self, maps: Array) -> Array:
        """(S, S) or (C, S, S) maps averaged onto the bundle's g x g grid."""
        g = self.grid
        if maps.ndim == 2:
            return np.asarray(cv2.resize(maps, (g, g), interpolation=cv2.INTER_AREA), np.float32)
        return np.stack([self._to_grid(m) for m in maps])

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch (classes defined by text are not scored: their maps are zeros)."""
        out = self.pipeline(torch.from_numpy(images))
        anomaly = np.stack([self._to_grid(a) for a in out.anomaly.numpy()])
        classes = np.stack([self._to_grid(c) for c in out.class_probs.numpy()])
        scores = np.concatenate(
            [anomaly.max(axis=(1, 2))[:, None], classes[:, 1:].max(axis=(2, 3))], 1
        )
        n, g = len(images), self.grid
        return EngineOutput(classes, anomaly, scores, np.zeros((n, self.slots, g, g), np.float32))


def build_parser() -> argparse.ArgumentParser:
    """The command's own arguments; the rest go to scrapscan-serve or scrapscan-worker."""
    p = command("scrapscan-iap-as", __doc__)
    p.add_argument("role", choices=("serve", "worker"), help="which process to run")
    p.add_argument("--config", type=Path, required=True, help="the IAP-AS config (weights)")
    p.add_argument(
        "--report",
        type=Path,
        required=True,
        help="report.json of scrapscan-eval --iap-as: the tags, prompts and size threshold",
    )
    return p


def plug(cfg: IAPASConfig, report: Path) -> None:
    """Make engine iap-as the IAP-AS pipeline of `cfg` with stage 1 from `report`."""

    def factory(bundle: Bundle, device: str, threads: int) -> Any:
        if threads:
            torch.set_num_threads(threads)
        on = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        pipeline = IAPAS(cfg, on)
        pipeline.use_report(report)
        return IAPASEngine(pipeline, bundle)

    plug_engine("iap-as", factory)


def main(argv: Sequence[str] | None = None) -> int:
    """Check the config and the report, plug the engine in, run the service."""
    args, rest = build_parser().parse_known_args(argv)
    try:
        cfg = load_iapas_config(args.config)
        read_stage_one(args.report)  # the report read before any model is loaded
    except (ConfigError, WeightsError, ValueError) as err:
        print(f"scrapscan-iap-as: {err}", file=sys.stderr)
        return 1
    plug(cfg, args.report)
    os.environ["SCRAPSCAN_ENGINE"] = "iap-as"
    if args.role == "serve":
        from service.cli import main as serve

        return serve(rest)
    from service.worker import main as work

    return work(rest)


if __name__ == "__main__":
    sys.exit(main())
