"""scrapscan-train: finetune the model on a folder of labelled crane frames.

A run folder holds everything needed to continue or reproduce a run:

    RUN_DIR/config.yaml         the resolved configuration
    RUN_DIR/run.json            git revision, data folder, class statistics, class weights,
                                where the weights came from, the hard-negative patches
    RUN_DIR/checkpoint.pt       model (evaluation weights), optimizer, position in the data
    RUN_DIR/metrics.jsonl       one JSON line per logged step and per epoch
    RUN_DIR/tensorboard/        the same scalars for TensorBoard, when it is installed

A checkpoint is written at the end of every epoch, when --max-steps is reached, and
when the run is interrupted (Ctrl-C or SIGTERM). `--resume` continues from it with the
same optimizer state, the same order of patches and the same settings; only RESUMABLE
settings may change (train.epochs, to lengthen a run), and config.yaml records them.
The data must give as many patches as the run's own (run.json); new frames make a new run.
Under `torchrun` the same command trains with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs); rank 0 writes.

Longer than the project's 400 lines for a module: its one job is the command and its loop;
the run folder (training/runs.py), the patch order (training/data/sampler.py) and torchrun
(training/distributed.py) are elsewhere, and `train` stays one function so that a step
can be read top to bottom.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import schedulefree
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from training.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    Position,
    init_weights,
    load_checkpoint,
    save_checkpoint,
)
from training.config import ConfigError, RunConfig, load_config
from training.data import DataError, PatchSet, load_frames
from training.data.dataset import PatchDataset
from training.data.patch_cache import PatchCache
from training.data.sampler import EpochSampler
from training.distributed import setup_distributed
from training.losses import merge_anomaly_classes, total_loss
from training.model import ScrapAnomalyModel, WeightsError, build_model
from training.runs import (
    RESUMABLE,
    HardNegativesError,
    ResumeError,
    check_resumed_data,
    check_run_folder,
    hard_negative_patches,
    prepare_run,
)

LOG_EVERY = 10


class Interrupted(Exception):
    """Raised in the training loop when SIGINT or SIGTERM arrives."""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="scrapscan-train",
        description="Finetune the CLIP-based anomaly segmentation model on labelled crane "
        "frames (a data folder as scrapscan-data check accepts).",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="training configuration (e.g. configs/paper.yaml, configs/tiny.yaml); with "
        "--resume RUN_DIR/config.yaml by default, and a given one may differ from it only "
        f"in {', '.join(sorted(RESUMABLE - {'name'}))}",
    )
    p.add_argument("--data", type=Path, metavar="DIR", help="labelled frames to train on")
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder to create (or resume)")
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps in all (checkpoint written)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its checkpoint, on its own data",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="PATH",
        help="start the new run from a trained model instead of the config's weights: a "
        "scrapscan-train checkpoint, or a bundle folder with model.pt2 (its image side as "
        "it is, the prompts fitted to its text features); for a yard refining the model it "
        "serves on newly labelled frames. The config must describe the same model, or from a "
        "checkpoint one with k times its vision blocks (feature_layers and dpam_from_layer "
        "moved to match; the added blocks start silent)",
    )
    p.add_argument(
        "--hard-negatives",
        type=Path,
        metavar="FILE",
        help="false_regions.json of `scrapscan-eval --bundle` on the training frames (a "
        "new run only): the patches holding a region the served model reported where the "
        "labels have nothing make train.hard_negative_share of every epoch; run.json keeps "
        "them for --resume",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model without pretrained weights, print its trainable "
        "parameters per part (and the data's patch counts with --data), then stop",
    )
    p.add_argument(
        "--patch-cache",
        type=Path,
        metavar="DIR",
        help="keep every patch at model size in DIR (about 1.1 MB a patch) and read them "
        "from there: each frame is decoded once instead of once per patch; built on first "
        "use, rebuilt when the data or the tiling differ, shared by runs on the same data",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train (auto: CUDA when available)",
    )
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"scrapscan-train: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    config = args.config
    if config is None:
        if not (args.resume and args.out):
            parser.error("--config is needed (with --resume it defaults to RUN_DIR/config.yaml)")
        config = args.out / "config.yaml"
    try:
        cfg = load_config(config)
    except ConfigError as err:
        return _fail(str(err))
    if args.dry_run:
        return dry_run(cfg, args.data)
    if args.data is None or args.out is None:
        parser.error("--data and --out are needed to train (or use --dry-run)")
    if args.resume and args.init_from:
        parser.error("--init-from starts a new run; a resumed run goes on from its checkpoint")
    if args.resume and args.hard_negatives:
        parser.error("--hard-negatives starts a new run; a resumed run keeps its own")
    if not args.resume and (args.hard_negatives is None) != (cfg.train.hard_negative_share is None):
        return _fail(
            "--hard-negatives and the config's train.hard_negative_share go together; "
            f"{config} has hard_negative_share {cfg.train.hard_negative_share} and "
            f"--hard-negatives is {'missing' if args.hard_negatives is None else 'given'}"
        )
    try:
        return train(
            cfg,
            args.data,
            args.out,
            args.resume,
            args.max_steps,
            args.device,
            args.patch_cache,
            args.init_from,
            args.hard_negatives,
        )
    except (DataError, WeightsError, CheckpointError, HardNegativesError) as err:
        return _fail(str(err), 1)
    except (FileExistsError, ResumeError) as err:
        return _fail(str(err))


def dry_run(cfg: RunConfig, data: Path | None) -> int:
    """Print the model's trainable parameters per part, and the data's patches per class."""
    model = build_model(cfg.model.model_copy(update={"pretrained": None}))
    groups = model.parameter_groups()
    print(
        f"{cfg.name}: {cfg.model.clip_model} at {cfg.model.input_size} px, "
        f"stages after blocks {list(cfg.model.feature_layers)}"
    )
    for part, n in groups.items():
        print(f"  trainable {part:<14} {n:>13,}")
    print(f"  trainable {'total':<14} {sum(groups.values()):>13,}")
    if data is not None:
        try:
            patches = PatchSet.for_config(load_frames(data), cfg)
        except DataError as err:
            return _fail(str(err), 1)
        print(patches.class_stats().table())
    return 0


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Make a data-loader worker ignore SIGINT and SIGTERM.

    Ctrl-C, systemd and Slurm signal the whole process group. A worker killed by the
    signal makes the loader raise in the main process while it writes the interrupt
    checkpoint; ignored, the workers are shut down by the loader once the main process
    stops iterating.
    """
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def make_optimizer(model: ScrapAnomalyModel, cfg: RunConfig) -> Any:
    """Schedule-free AdamW over the model's trainable parameters, as `cfg.train` sets it."""
    return schedulefree.AdamWScheduleFree(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        betas=cfg.train.betas,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_steps,
    )


def train_step(
    net: torch.nn.Module,
    optimizer: Any,
    images: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor,
    cfg: RunConfig,
    autocast: Any,
    step: int = 0,
) -> dict[str, float]:
    """One optimisation step on a batch; returns the loss and its parts.

    A loss that is not finite raises FloatingPointError before the weights change.
    """
    if cfg.model.prompt_mode == "binary":
        masks = merge_anomaly_classes(masks)
    with autocast:
        output = net(images)
    loss, parts = total_loss(
        output, masks, weights, cfg.train.msm_stage_weights, cfg.train.focal_gamma
    )
    if not math.isfinite(parts["loss"]):
        raise FloatingPointError(f"loss became {parts['loss']} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return parts


def train(
    cfg: RunConfig,
    data: Path,
    out: Path,
    resume: bool,
    max_steps: int | None,
    device: str = "auto",
    patch_cache: Path | None = None,
    init_from: Path | None = None,
    hard_negatives: Path | None = None,
) -> int:
    """Train; returns 0 when done, 130 when interrupted (checkpoint written either way).

    `init_from` (a new run only): the checkpoint or bundle to take the weights from;
    `hard_negatives` (a new run only): the false_regions.json whose patches are drawn at
    train.hard_negative_share.
    """
    env = setup_distributed(device)
    check_run_folder(out, cfg, resume, env.main)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    start = None if init_from is None else init_weights(init_from, model)
    model = model.to(env.device)
    patches = PatchSet.for_config(load_frames(data), cfg)
    resumed = check_resumed_data(out, data, len(patches), env.main) if resume else None
    hard = None  # checked before the patch cache and the pass over every mask
    if hard_negatives is not None:
        hard = hard_negative_patches(hard_negatives, patches, cfg.train.hard_negative_min_score)
    cache = None
    if patch_cache is not None:  # built by the main process; the others wait, then open it
        if env.main:
            cache = PatchCache.open(patches, patch_cache)
        if env.world > 1:
            dist.barrier()
        if not env.main:
            cache = PatchCache.open(patches, patch_cache, log=False)
    # a pass over every mask (the cache's, when there is one): needed for new runs' class
    # weights and for anomaly_share
    needed = not resume or cfg.train.anomaly_share is not None
    source = patches if cache is None else cache
    counts = source.pixel_counts() if needed else None
    anomalous = [] if counts is None else np.flatnonzero(counts[:, 1:].sum(axis=1)).tolist()
    info = resumed or prepare_run(out, cfg, data, patches, counts, env.main, start, hard)
    hard_patches = info.get("hard_negatives", {}).get("patches", [])
    weights = torch.tensor(info["class_weights"], dtype=torch.float32, device=env.device)

    model.grad_checkpointing = cfg.train.grad_checkpointing
    optimizer = make_optimizer(model, cfg)
    pos = Position()
    if resume:
        model.eval()
        optimizer.eval()
        pos = load_checkpoint(out / CHECKPOINT, model, optimizer)
    net: torch.nn.Module = model
    if env.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )

    dataset = PatchDataset(patches, cfg.data.augment, cfg.train.seed, cache)
    batches_per_epoch = len(patches) // env.world // cfg.train.batch_size
    if batches_per_epoch == 0:
        raise ValueError(
            f"{len(patches)} patches cannot fill a batch of {cfg.train.batch_size} "
            f"on {env.world} process(es)"
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if env.device.type == "cuda" and cfg.train.bf16
        else nullcontext()
    )
    log = (out / "metrics.jsonl").open("a") if env.main else None
    board = _tensorboard(out) if env.main else None
    bar = _progress(env.main, batches_per_epoch * cfg.train.epochs, pos.step)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while pos.epoch < cfg.train.epochs:
            sampler = EpochSampler(
                len(patches),
                cfg.train.seed,
                pos.epoch,
                env.rank,
                env.world,
                pos.batch * cfg.train.batch_size,
                anomalous,
                cfg.train.anomaly_share,
                hard_patches,
                cfg.train.hard_negative_share,
            )
            loader = DataLoader(
                dataset,
                batch_size=cfg.train.batch_size,
                sampler=sampler.keys(),
                num_workers=cfg.train.num_workers,
                drop_last=True,
                pin_memory=env.device.type == "cuda",
                worker_init_fn=_leave_signals_to_the_main_process,
            )
            model.train()
            optimizer.train()
            tick, seen = time.perf_counter(), 0
            for images, masks in loader:
                images = images.to(env.device, non_blocking=True)
                masks = masks.to(env.device, non_blocking=True)
                parts = train_step(net, optimizer, images, masks, weights, cfg, autocast, pos.step)
                pos.batch += 1
                pos.step += 1
                seen += images.shape[0] * env.world
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", epoch=pos.epoch + 1)
                if log is not None and (pos.step % LOG_EVERY == 0 or pos.step == 1):
                    rate = seen / max(time.perf_counter() - tick, 1e-9)
                    _log(
                        log,
                        {
                            "step": pos.step,
                            "epoch": pos.epoch + 1,
                            **parts,
                            "patches_per_s": round(rate, 2),
                        },
                    )
                    if board is not None:
                        for key, value in {**parts, "patches_per_s": rate}.items():
                            board.add_scalar(f"train/{key}", value, pos.step)
                if max_steps is not None and pos.step >= max_steps:
                    break
            else:
                pos.epoch += 1
                pos.batch = 0
            model.eval()
            optimizer.eval()
            if env.main:
                save_checkpoint(out / CHECKPOINT, model, optimizer, pos, cfg)
                if log is not None:
                    _log(
                        log, {"step": pos.step, "epochs_done": pos.epoch, "checkpoint": CHECKPOINT}
                    )
            if max_steps is not None and pos.step >= max_steps:
                break
    except Interrupted as why:
        model.eval()
        optimizer.eval()
        if env.main:
            save_checkpoint(out / CHECKPOINT, model, optimizer, pos, cfg)
            print(
                f"\nscrapscan-train: {why}: checkpoint written at step {pos.step}; "
                f"continue with --resume",
                file=sys.stderr,
            )
        code = 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if board is not None:
            board.close()
        if env.world > 1:
            dist.destroy_process_group()
    if code == 0 and env.main:
        print(
            f"scrapscan-train: step {pos.step}, {pos.epoch} epoch(s) done; "
            f"checkpoint {out / CHECKPOINT}"
        )
    return code


def _log(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
    handle.flush()


def _tensorboard(out: Path) -> Any:
    """A TensorBoard writer into RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(main_rank: bool, total: int, done: int) -> Any:
    if not main_rank:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, unit="batch", dynamic_ncols=True, disable=not sys.stderr.isatty()
    )


if __name__ == "__main__":
    sys.exit(main())
