"""scrapscan-region: train the region encoder on labelled frames, and judge it.

    scrapscan-region train --config configs/region-tiny.yaml --data DIR --out RUN_DIR
        [--negatives false_regions.json] [--finds found_regions.json] [--val DIR]
        [--resume] [--max-steps N]
    scrapscan-region evaluate --checkpoint RUN_DIR/checkpoint.pt --data DIR --out REPORT_DIR

Training (the paper's recipe): each batch holds regions (crop and mask) and, for each, one
of its class's descriptions; the supervised contrastive loss pulls together every
embedding of a class, regions and texts alike, and pushes the others apart. AdamW with
three learning rates: the alpha convolution, the RGB patch convolution, and LoRA's
weights (or the whole tower at rank 0). Crops are turned by 90 degrees and mirrored (a
top-down camera). A checkpoint is written after each epoch and on Ctrl-C or SIGTERM.

Evaluation: a region's description is the one of highest cosine similarity among all
descriptions; its class is that description's class. Accuracy of that class on the true
regions, in all and by the number of labelled regions in the frame (the paper's Table 4
form), per class, and the confusion table; for checking instances, the AUROC of the
contaminant-vs-plain-scrap score (the best contaminant description's similarity minus
the best plain one's) over true regions and plain-scrap regions.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from common.classes import CLASS_NAMES
from common.cli import command
from common.imaging import CLIP_MEAN, CLIP_STD
from training.config import ConfigError, load_as
from training.data.frames import DataError, load_frames
from training.model import WeightsError
from training.region.config import RegionRunConfig
from training.region.data import (
    RegionCrops,
    found_regions,
    labelled_regions,
    negative_regions,
    normal_regions,
)
from training.region.describe import DescriptionError, Descriptions, load_descriptions
from training.region.model import RegionEncoder, build_region_encoder

CHECKPOINT = "checkpoint.pt"


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.) of L2-normalised (N, D) `features`.

    For each anchor with at least one positive (same label, not itself): the mean over its
    positives of -log(exp(s_ip / t) / sum over all others a of exp(s_ia / t)).
    """
    n = features.shape[0]
    sim = features @ features.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has = counts > 0
    mean_log = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has] / counts[has]
    return -mean_log.mean()


def to_inputs(
    rgb: np.ndarray[Any, Any], alpha: np.ndarray[Any, Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, S, S, 3) and (B, S, S) as the encoder's CLIP-normalised images and masks."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    a = torch.from_numpy(np.ascontiguousarray(alpha)).to(device).float()[:, None] / 255
    return (x - mean) / std, a


def _augment(
    rgb: np.ndarray[Any, Any], alpha: np.ndarray[Any, Any], rng: np.random.Generator
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    rgb, alpha = np.rot90(rgb, k, axes=(1, 2)), np.rot90(alpha, k, axes=(1, 2))
    if flip:
        rgb, alpha = rgb[:, :, ::-1], alpha[:, :, ::-1]
    return rgb, alpha


def gather_crops(
    cfg: RegionRunConfig,
    data: Path,
    negatives: Path | None,
    normal_per_frame: int,
    finds: Path | None = None,
) -> RegionCrops:
    """The regions of a data folder (labelled, plain scrap, negatives, finds), cut once."""
    frames = load_frames(data)
    labelled = labelled_regions(frames)
    sizes = [max(r.box[2], r.box[3]) for r in labelled]
    regions = labelled + normal_regions(frames, normal_per_frame, sizes, cfg.train.seed)
    if negatives is not None:
        regions += negative_regions(negatives, frames)
    if finds is not None:
        regions += found_regions(finds, frames)
    m = cfg.model
    return RegionCrops.cut(regions, m.input_size, m.context, m.min_crop)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during training."""


def train(
    cfg: RegionRunConfig,
    data: Path,
    out: Path,
    resume: bool = False,
    negatives: Path | None = None,
    val: Path | None = None,
    max_steps: int | None = None,
    finds: Path | None = None,
) -> int:
    """Train; 0 when done, 130 when interrupted (a checkpoint is written either way)."""
    if resume != (out / CHECKPOINT).is_file():
        raise FileExistsError(
            f"{out}: no {CHECKPOINT} to resume"
            if resume
            else f"{out} holds a run already; --resume it or choose a new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    descriptions = load_descriptions(cfg.descriptions)
    encoder = build_region_encoder(cfg.model, cfg.lora)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    groups = encoder.parameter_groups()
    t = cfg.train
    optimizer = torch.optim.AdamW(
        [
            {"params": groups["alpha"], "lr": t.lr_alpha},
            {"params": groups["rgb"], "lr": t.lr_rgb},
            {"params": groups["tower"], "lr": t.lr},
        ],
        betas=t.betas,
        weight_decay=t.weight_decay,
    )
    crops = gather_crops(cfg, data, negatives, t.normal_per_frame, finds)
    held = gather_crops(cfg, val, None, 1) if val is not None else None
    text, text_classes = _text_table(encoder, descriptions)
    by_class = [np.flatnonzero(text_classes == k) for k in range(len(CLASS_NAMES))]
    epoch, step = 0, 0
    if resume:
        state = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"], state["step"]
        rng = np.random.default_rng(cfg.train.seed + epoch)
    else:
        (out / "config.json").write_text(cfg.model_dump_json(indent=1) + "\n")
    if len(crops) < t.batch_size:
        raise ValueError(f"{data}: {len(crops)} regions cannot fill a batch of {t.batch_size}")
    counts = np.bincount(crops.classes, minlength=len(CLASS_NAMES)).tolist()
    print(
        f"{len(crops)} regions: "
        + ", ".join(f"{n} {c}" for c, n in zip(CLASS_NAMES, counts, strict=True))
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log = (out / "metrics.jsonl").open("a")
    code = 0
    try:
        while epoch < t.epochs and (max_steps is None or step < max_steps):
            encoder.train()
            order = rng.permutation(len(crops))
            losses = []
            for start in range(0, len(order) - t.batch_size + 1, t.batch_size):
                idx = np.sort(order[start : start + t.batch_size])
                rgb, alpha = _augment(crops.rgb[idx], crops.alpha[idx], rng)
                x, a = to_inputs(rgb, alpha, device)
                labels = torch.from_numpy(crops.classes[idx]).to(device)
                picked = [int(rng.choice(by_class[int(k)])) for k in crops.classes[idx]]
                feats = torch.cat([encoder.encode_region(x, a), text[picked]])
                loss = supcon_loss(feats, torch.cat([labels, labels]), t.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                if max_steps is not None and step >= max_steps:
                    break
            epoch += 1 if max_steps is None or step < max_steps else 0
            row: dict[str, Any] = {"epoch": epoch, "step": step, "loss": float(np.mean(losses))}
            if held is not None:
                row["val_accuracy"] = judge(encoder, held, descriptions)["accuracy"]
            row["time"] = time.time()
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
            _save(out, encoder, optimizer, epoch, step)
    except Interrupted as why:
        print(f"scrapscan-region: {why}; checkpoint written", file=sys.stderr)
        _save(out, encoder, optimizer, epoch, step)
        code = 130
    finally:
        log.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


def _save(
    out: Path, encoder: RegionEncoder, optimizer: torch.optim.Optimizer, epoch: int, step: int
) -> None:
    tmp = out / f"{CHECKPOINT}.tmp"
    torch.save(
        {
            "config": json.loads((out / "config.json").read_text()),
            "model": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
        },
        tmp,
    )
    tmp.replace(out / CHECKPOINT)


def _text_table(
    encoder: RegionEncoder, descriptions: Descriptions
) -> tuple[torch.Tensor, np.ndarray[Any, Any]]:
    flat = descriptions.flat
    text = encoder.encode_texts([t for _, t in flat])
    return text, np.asarray([k for k, _ in flat], np.int64)


def load_encoder(checkpoint: Path) -> tuple[RegionEncoder, RegionRunConfig]:
    """A trained encoder from its checkpoint, in eval mode (WeightsError if not one)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        cfg = RegionRunConfig.model_validate(state["config"])
    except Exception as err:
        raise WeightsError(f"{checkpoint}: not a scrapscan-region checkpoint ({err})") from err
    model_cfg = cfg.model.model_copy(update={"pretrained": None, "alpha_weights": None})
    encoder = build_region_encoder(model_cfg, cfg.lora)
    encoder.load_state_dict(state["model"])
    return encoder.eval(), cfg


@torch.no_grad()
def embed(encoder: RegionEncoder, crops: RegionCrops, batch: int = 64) -> torch.Tensor:
    """(N, D) embeddings of every crop."""
    device = encoder.conv1_alpha.weight.device
    out = []
    for start in range(0, len(crops), batch):
        x, a = to_inputs(
            crops.rgb[start : start + batch], crops.alpha[start : start + batch], device
        )
        out.append(encoder.encode_region(x, a))
    return torch.cat(out) if out else torch.zeros((0, 1))


@torch.no_grad()
def judge(encoder: RegionEncoder, crops: RegionCrops, descriptions: Descriptions) -> dict[str, Any]:
    """Description accuracy and the verification AUROC over `crops` (module docstring)."""
    from sklearn.metrics import roc_auc_score

    was = encoder.training
    encoder.eval()
    text, text_classes = _text_table(encoder, descriptions)
    sims = (embed(encoder, crops) @ text.T).cpu().numpy()
    encoder.train(was)
    predicted = text_classes[sims.argmax(axis=1)]
    truth = crops.classes
    labelled = np.asarray([r.source == "label" for r in crops.regions])
    per_frame: dict[Path, int] = {}
    for r in crops.regions:
        if r.source == "label":
            per_frame[r.frame.image_path] = per_frame.get(r.frame.image_path, 0) + 1
    by_count: dict[str, list[bool]] = {}
    for k, r in enumerate(crops.regions):
        if r.source == "label":
            n = per_frame[r.frame.image_path]
            by_count.setdefault(str(n) if n < 5 else "5+", []).append(predicted[k] == truth[k])
    contaminant = sims[:, text_classes > 0].max(axis=1) - sims[:, text_classes == 0].max(axis=1)
    is_contaminant = truth > 0
    negative = np.asarray([r.source == "negative" for r in crops.regions])

    def auroc(keep: np.ndarray[Any, Any]) -> float | None:
        y = is_contaminant[keep]
        return float(roc_auc_score(y, contaminant[keep])) if 0 < y.sum() < len(y) else None

    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    right = predicted[labelled] == truth[labelled]
    return {
        "regions": len(truth),
        "true_regions": int(labelled.sum()),
        "accuracy": float(right.mean()) if right.size else None,
        "accuracy_by_regions_in_frame": {
            n: {"regions": len(v), "accuracy": float(np.mean(v))}
            for n, v in sorted(by_count.items())
        },
        "per_class_accuracy": {
            name: float((predicted[truth == k] == k).mean()) if (truth == k).any() else None
            for k, name in enumerate(CLASS_NAMES)
        },
        "confusion": {
            name: dict(zip(CLASS_NAMES, map(int, confusion[k]), strict=True))
            for k, name in enumerate(CLASS_NAMES)
        },
        "verification_auroc": auroc(np.ones(len(truth), bool)),
        "verification_auroc_served_false": auroc(labelled | negative) if negative.any() else None,
    }


def _negatives(p: argparse.ArgumentParser, what: str) -> None:
    said = f"false_regions.json of scrapscan-eval {what}"
    p.add_argument("--negatives", type=Path, metavar="FILE", help=said)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-region", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on a labelled data folder")
    t.add_argument("--config", type=Path, metavar="FILE", help="e.g. configs/region-tiny.yaml")
    t.add_argument("--data", type=Path, required=True, metavar="DIR")
    t.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
    _negatives(t, "on the same frames: the served model's false regions, learned as plain scrap")
    t.add_argument(
        "--finds",
        type=Path,
        metavar="FILE",
        help="found_regions.json of scrapscan-eval on the same frames: the served model's "
        "instances that found a contaminant, learned as its class in the outline the service "
        "describes (besides the labelled outline)",
    )
    t.add_argument("--val", type=Path, metavar="DIR", help="frames to judge after each epoch")
    t.add_argument("--resume", action="store_true", help="go on from RUN_DIR's checkpoint")
    t.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps in all")
    e = sub.add_parser("evaluate", help="description accuracy and verification on frames")
    e.add_argument("--checkpoint", type=Path, required=True, metavar="FILE")
    e.add_argument("--data", type=Path, required=True, metavar="DIR")
    e.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR")
    _negatives(
        e,
        "on these frames: the served false regions join the plain scrap the verification "
        "AUROC sets the contaminants against",
    )
    e.add_argument(
        "--plain-per-frame",
        type=int,
        default=2,
        metavar="N",
        help="plain-scrap regions drawn per frame for the verification AUROC (2)",
    )
    return p


def _fail(message: str, code: int) -> int:
    print(f"scrapscan-region: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "evaluate":
            encoder, cfg = load_encoder(args.checkpoint)
            descriptions = load_descriptions(cfg.descriptions)
            crops = gather_crops(cfg, args.data, args.negatives, args.plain_per_frame)
            report = {
                "checkpoint": str(args.checkpoint),
                "data": str(args.data),
                **judge(encoder, crops, descriptions),
            }
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            print(json.dumps({k: report[k] for k in ("accuracy", "verification_auroc")}))
            return 0
        if args.config is None and not args.resume:
            parser.error("--config is needed for a new run")
        if args.resume and not (args.out / CHECKPOINT).is_file():
            return _fail(f"{args.out}: no {CHECKPOINT} to resume", 2)
        config = args.config or args.out / "config.json"
        if config.suffix == ".json":
            cfg = RegionRunConfig.model_validate_json(config.read_text())
        else:
            cfg = load_as(RegionRunConfig, config)
        return train(
            cfg,
            args.data,
            args.out,
            args.resume,
            args.negatives,
            args.val,
            args.max_steps,
            args.finds,
        )
    except (ConfigError, DescriptionError, FileExistsError) as err:
        return _fail(str(err), 2)
    except (DataError, WeightsError, ValueError, FileNotFoundError) as err:
        return _fail(str(err), 1)


if __name__ == "__main__":
    sys.exit(main())
