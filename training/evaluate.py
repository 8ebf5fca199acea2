"""scrapscan-eval: pixel-level evaluation of a trained checkpoint on labelled frames.

With --winclip CONFIG instead of --checkpoint it evaluates the WinCLIP zero-shot
baseline (training.winclip) with the CLIP that CONFIG's model section names; with
--iap-as CONFIG the IAP-AS zero-shot pipeline (training.iapas: image tags, prompts,
Grounding DINO boxes, SAM masks), whose tags, prompts and size threshold the report keeps.

The frames are cut into patches exactly as for training; the model's binary anomaly map
is upsampled to the input size and smoothed with a Gaussian (sigma 4 by default, as the
model's ancestors evaluate), and compared with the masks pixel by pixel. Metrics are
streamed (training.metrics.PixelMetricAccumulator), so the test set may be large.

REPORT_DIR/report.json     metrics (fractions in [0, 1]), per-class AP, settings
REPORT_DIR/roc.png, pr.png the binary ROC and precision-recall curves
REPORT_DIR/worst_*.jpg, best_*.jpg   patches: image | ground truth | predicted map

A bundle on the served path (instances, frame verdicts, trucks) and its calibration:
scrapscan-eval --bundle DIR --help.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from common.classes import ANOMALY_CLASSES, IGNORE_INDEX
from common.cli import command
from common.imaging import INPUT_SIZE, normalize
from common.overlay import draw_overlay
from training.checkpoint import CheckpointError, load_trained
from training.config import BinaryMode, ConfigError, RunConfig, load_config
from training.data import DataError, PatchSet, load_frames
from training.distributed import pick_device
from training.metrics import PixelMetricAccumulator
from training.model import ModelOutput, WeightsError, upsample

DEFAULT_SIGMA = 4.0

Scorer = Callable[[torch.Tensor], ModelOutput]
"""What is evaluated: a trained ScrapAnomalyModel or the WinCLIP baseline."""


def smooth(maps: npt.NDArray[np.float32], sigma: float) -> npt.NDArray[np.float32]:
    """Gaussian-smooth each (H, W) map of an (N, H, W) stack; sigma 0 leaves them as they are."""
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in maps]).astype(np.float32)


@dataclass(slots=True)
class _Ranked:
    """Patches ranked by how wrong the map is (mean absolute error over labelled pixels)."""

    keep: int
    worst: list[tuple[float, int]] = field(default_factory=list)
    best: list[tuple[float, int]] = field(default_factory=list)

    def add(self, error: float, index: int, anomalous: bool) -> None:
        heapq.heappush(self.worst, (error, index))
        if len(self.worst) > self.keep:
            heapq.heappop(self.worst)
        if anomalous:
            heapq.heappush(self.best, (-error, index))
            if len(self.best) > self.keep:
                heapq.heappop(self.best)


@dataclass(slots=True)
class Evaluation:
    """What `evaluate` measured."""

    pixel: dict[str, float]
    per_class_ap: dict[str, float | None]
    patches: int
    curves: dict[str, npt.NDArray[np.float64]]
    worst: list[int]
    best: list[int]


def predict(
    model: Scorer,
    images: npt.NDArray[np.uint8],
    sigma: float,
    device: torch.device | str,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Anomaly maps (N, S, S) smoothed, and class maps (N, C, S, S) for (N, S, S, 3) RGB patches."""
    x = torch.from_numpy(np.stack([normalize(im) for im in images])).to(device)
    with torch.no_grad():
        out = model(x)
    size = images.shape[1]
    anomaly = upsample(out.anomaly.float(), size).cpu().numpy()
    classes = upsample(out.class_probs.float(), size).cpu().numpy()
    return smooth(anomaly, sigma), classes


def evaluate(
    model: Scorer,
    patches: PatchSet,
    batch_size: int = 8,
    sigma: float = DEFAULT_SIGMA,
    device: torch.device | str = "cpu",
    keep: int = 4,
) -> Evaluation:
    """Stream every patch through the model and measure it against the masks."""
    binary = PixelMetricAccumulator()
    per_class = [PixelMetricAccumulator() for _ in ANOMALY_CLASSES]
    ranked = _Ranked(keep)
    for start in range(0, len(patches), batch_size):
        batch = [patches[i] for i in range(start, min(start + batch_size, len(patches)))]
        images = np.stack([p.image for p in batch])
        masks = np.stack([p.mask for p in batch])
        anomaly, classes = predict(model, images, sigma, device)
        valid = masks != IGNORE_INDEX
        truth = valid & (masks > 0)
        binary.update(anomaly, truth, valid)
        if classes.shape[1] == len(ANOMALY_CLASSES) + 1:  # binary prompts have no classes
            for c, acc in enumerate(per_class, start=1):
                acc.update(classes[:, c], valid & (masks == c), valid)
        for k, (a, t, v) in enumerate(zip(anomaly, truth, valid, strict=True)):
            ranked.add(float(np.abs(a - t)[v].mean()), start + k, bool(t.any()))
    ap: dict[str, float | None] = {}
    for name, acc in zip(ANOMALY_CLASSES, per_class, strict=True):
        try:
            ap[name] = acc.compute()["ap"]
        except ValueError:  # no pixel of this class in the data
            ap[name] = None
    return Evaluation(
        binary.compute(),
        ap,
        len(patches),
        binary.curves(),
        [i for _, i in sorted(ranked.worst, reverse=True)],
        [i for _, i in sorted(ranked.best, reverse=True)],
    )


def _plot_curves(out: Path, ev: Evaluation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = ev.curves
    for name, (x, y, xlabel, ylabel, label) in {
        "roc.png": (
            c["fpr"],
            c["tpr"],
            "false positive rate",
            "true positive rate",
            f"AUROC {ev.pixel['auroc']:.3f}",
        ),
        "pr.png": (c["recall"], c["precision"], "recall", "precision", f"AP {ev.pixel['ap']:.3f}"),
    }.items():
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.plot(x, y, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)


def _write_overlays(
    out: Path,
    model: Scorer,
    patches: PatchSet,
    ev: Evaluation,
    sigma: float,
    device: torch.device | str,
) -> None:
    for kind, indices in (("worst", ev.worst), ("best", ev.best)):
        for rank, i in enumerate(indices, start=1):
            patch = patches[i]
            anomaly, _ = predict(model, patch.image[None], sigma, device)
            bgr = np.asarray(cv2.cvtColor(patch.image, cv2.COLOR_RGB2BGR), dtype=np.uint8)
            truth = draw_overlay(bgr, np.where(patch.mask == IGNORE_INDEX, 0, patch.mask))
            heat = cv2.applyColorMap(
                np.clip(anomaly[0] * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET
            )
            pred = cv2.addWeighted(bgr, 0.5, heat, 0.5, 0)
            cv2.imwrite(str(out / f"{kind}_{rank}.jpg"), np.hstack([bgr, truth, pred]))


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-eval", __doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="a scrapscan-train checkpoint"
    )
    what.add_argument(
        "--winclip",
        type=Path,
        metavar="CONFIG",
        help="evaluate the WinCLIP zero-shot baseline with the CLIP of CONFIG's model section "
        "(configs/winclip.yaml: ViT-B-16-plus-240, laion400m_e31)",
    )
    what.add_argument(
        "--iap-as",
        type=Path,
        metavar="CONFIG",
        help="evaluate the IAP-AS zero-shot pipeline (training/iapas.py: Grounding DINO, SAM "
        "and a CLIP tagger from the local weights CONFIG names; configs/iap-as.yaml)",
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="labelled frames")
    p.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--sigma",
        type=float,
        default=DEFAULT_SIGMA,
        help=f"Gaussian smoothing of the maps in pixels, 0 for none ({DEFAULT_SIGMA})",
    )
    p.add_argument(
        "--overlays",
        type=int,
        default=4,
        metavar="N",
        help="write the N worst and N best patches as images (4)",
    )
    p.add_argument(
        "--binary-mode",
        choices=[m.value for m in BinaryMode],
        help="how the binary anomaly score is formed (default: the checkpoint's)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.overlays < 0 or args.sigma < 0:
        parser.error("--batch-size must be >= 1, --overlays and --sigma >= 0")
    if (args.out / "report.json").exists() and not args.overwrite:
        print(
            f"scrapscan-eval: {args.out} already holds report.json; pass --overwrite",
            file=sys.stderr,
        )
        return 2
    device = pick_device(args.device)
    model: Scorer
    try:
        iapas = None
        if args.iap_as is not None:
            from training.iapas import IAPAS, load_iapas_config, normal_patches

            iap_cfg = load_iapas_config(args.iap_as)  # every weights path, before any work
            cfg = RunConfig(name=iap_cfg.name)
            patches = PatchSet.for_config(load_frames(args.data), cfg)
            iapas = IAPAS(iap_cfg, device)
            iapas.prepare(normal_patches(patches, iap_cfg.tagger.normal_images, iap_cfg.seed))
            model, mode = iapas, "iap-as"
        elif args.winclip is not None:
            from training.winclip import WinCLIP

            cfg = load_config(args.winclip)
            model = WinCLIP.build(cfg.model).to(device)
            mode = "winclip"
            # the patches are cut as for the paper's model; WinCLIP resizes them itself
            cfg = cfg.model_copy(
                update={"model": cfg.model.model_copy(update={"input_size": INPUT_SIZE})}
            )
        else:
            mode_arg = BinaryMode(args.binary_mode) if args.binary_mode else None
            trained, cfg = load_trained(args.checkpoint, device, mode_arg)
            model, mode = trained, trained.cfg.binary_mode.value
        if iapas is None:
            patches = PatchSet.for_config(load_frames(args.data), cfg)
        start = time.perf_counter()
        ev = evaluate(model, patches, args.batch_size, args.sigma, device, args.overlays)
    except (CheckpointError, DataError, ConfigError, WeightsError) as err:
        print(f"scrapscan-eval: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # e.g. no anomalous pixel in the data
        print(f"scrapscan-eval: {args.data}: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "winclip": None if args.winclip is None else str(args.winclip),
        "iap_as_config": None if args.iap_as is None else str(args.iap_as),
        "data": str(args.data),
        "patches": ev.patches,
        "sigma": args.sigma,
        "binary_mode": mode,
        "pixel": {k: round(v, 6) for k, v in ev.pixel.items()},
        "per_class_ap": {k: None if v is None else round(v, 6) for k, v in ev.per_class_ap.items()},
        "seconds": round(seconds, 2),
    }
    if iapas is not None:
        report["iap_as"] = iapas.describe()
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    _plot_curves(args.out, ev)
    _write_overlays(args.out, model, patches, ev, args.sigma, device)
    px = ev.pixel
    print(
        f"{ev.patches} patches: AUROC {px['auroc']:.4f}  AP {px['ap']:.4f}  "
        f"AUPRO {px['aupro']:.4f}  F1-max {px['f1_max']:.4f} at {px['f1_threshold']:.4f}"
    )
    print(
        "per-class AP: "
        + ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in ev.per_class_ap.items())
    )
    print(f"report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
