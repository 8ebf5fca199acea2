"""scrapscan-train: finetune the model on a folder of labelled crane frames.

A run folder holds everything needed to continue or reproduce a run:

    RUN_DIR/config.yaml         the resolved configuration
    RUN_DIR/run.json            git revision, data folder, class statistics, class weights
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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import schedulefree
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

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
from training.losses import class_balanced_weights, merge_anomaly_classes, total_loss
from training.model import ScrapAnomalyModel, WeightsError, build_model

LOG_EVERY = 10


class Interrupted(Exception):
    """Raised in the training loop when SIGINT or SIGTERM arrives."""


class EpochSampler(Sampler[int]):
    """Patches in an order fixed by (seed, epoch), split across ranks, resumable.

    Without `anomaly_share` an epoch is a permutation of all patches. With it, that share
    of the epoch's `size` draws comes from the patches in `anomalous` (those holding a
    contaminant) and the rest from the others, each group gone through in shuffled
    rounds (no patch drawn twice before its group has been drawn once), then mixed.
    `skip` leaves out the first items of this rank's share (batches already trained).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        skip: int,
        anomalous: Sequence[int] = (),
        anomaly_share: float | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        flagged = set(anomalous)
        if anomaly_share is None or not flagged or len(flagged) == size:
            order = torch.randperm(size, generator=g).tolist()
        else:
            normal = [i for i in range(size) if i not in flagged]
            wanted = round(anomaly_share * size)
            drawn = _rounds(sorted(flagged), wanted, g) + _rounds(normal, size - wanted, g)
            order = [drawn[i] for i in torch.randperm(size, generator=g).tolist()]
        share = len(order) // world  # every rank the same number of batches
        self.indices = order[rank * share : (rank + 1) * share][skip:]
        self.epoch, self.start = epoch, rank * share + skip

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def keys(self) -> list[tuple[int, int, int]]:
        """The epoch's items as (patch index, epoch, position in the epoch's whole order).

        These are the keys under which PatchDataset augments.
        """
        return [(i, self.epoch, self.start + n) for n, i in enumerate(self.indices)]

    def __len__(self) -> int:
        return len(self.indices)


def _rounds(group: list[int], count: int, g: torch.Generator) -> list[int]:
    """`count` items of `group`: whole shuffled passes over it, then part of one more."""
    out: list[int] = []
    while len(out) < count:
        out += [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
    return out[:count]


@dataclass(slots=True)
class Distributed:
    """The place of this process in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def pick_device(choice: str) -> str:
    """The device for a --device choice: cuda when asked, or auto and one is present."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def setup_distributed(device: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = pick_device(device) == "cuda"
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, dev)


def git_revision() -> str:
    """The source tree's git commit (with "+dirty" for local changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


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
        "serves on newly labelled frames. The config must describe the same model",
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
        )
    except (DataError, WeightsError, CheckpointError) as err:
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


def _check_run_folder(out: Path, cfg: RunConfig, resume: bool, main_rank: bool) -> None:
    """Refuse a run folder that cannot be used, before any data is read."""
    ckpt = out / CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise FileExistsError(f"{out} holds no {CHECKPOINT} to resume from")
        _check_resumed_config(out / "config.yaml", cfg, main_rank)
    # rank 0 alone decides: it creates run.json later, while the others may still check
    elif main_rank and (ckpt.exists() or (out / "run.json").exists()):
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )


def _prepare_run(
    out: Path,
    cfg: RunConfig,
    data: Path,
    patches: PatchSet,
    counts: npt.NDArray[np.int64] | None,
    main_rank: bool,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create the (checked) folder of a new run; returns run.json's content.

    `start`: where the weights came from (`init_weights`), when not from the config.
    """
    stats = patches.class_stats(counts)
    weights = class_weights(stats.pixels, cfg)
    info = {
        "git_revision": git_revision(),
        "data": str(data.resolve()),
        "patches": len(patches),
        "class_pixels": list(stats.pixels),
        "class_patches": list(stats.patches),
        "class_weights": [round(float(w), 6) for w in weights],
        **({"init_from": start} if start else {}),
    }
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        (out / "run.json").write_text(json.dumps(info, indent=2))
    return info


class ResumeError(ValueError):
    """A run cannot be resumed with the settings given; the message says why."""


RESUMABLE: frozenset[str] = frozenset(
    {"name", "train.epochs", "train.num_workers", "train.grad_checkpointing"}
)
"""Settings a resumed run may change: how long and how it runs, not what it computes."""


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Make a data-loader worker ignore SIGINT and SIGTERM.

    Ctrl-C, systemd and Slurm signal the whole process group. A worker killed by the
    signal makes the loader raise in the main process while it writes the interrupt
    checkpoint; ignored, the workers are shut down by the loader once the main process
    stops iterating.
    """
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_resumed_config(path: Path, cfg: RunConfig, main_rank: bool) -> None:
    """Refuse to resume with settings other than the run's own, except RESUMABLE ones.

    The run's config.yaml then records the settings it goes on with (a longer run's
    epochs, say).
    """
    try:
        started = _flatten(load_config(path).model_dump(mode="json"))
    except ConfigError as err:
        raise ResumeError(f"cannot resume: {err}") from None
    now = _flatten(cfg.model_dump(mode="json"))
    changed = [
        f"{key}: the run has {started.get(key)!r}, the config {now.get(key)!r}"
        for key in sorted(started.keys() | now.keys())
        if key not in RESUMABLE and started.get(key) != now.get(key)
    ]
    if changed:
        raise ResumeError(
            f"{path.parent} was started with other settings; resume it with its own "
            f"{path.name} (leave out --config) or start a new run. Changed: " + "; ".join(changed)
        )
    if main_rank and started != now:  # replaced whole: other ranks may be reading it
        fresh = path.with_suffix(".yaml.new")
        fresh.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        fresh.replace(path)


def _check_resumed_data(out: Path, data: Path, count: int, main_rank: bool) -> dict[str, Any]:
    """Refuse to resume on a data set of another size than the run's own; returns run.json.

    The epochs' patch order, the position within an epoch and the class weights all
    come from the run's data set; new frames make a new run. A data folder that moved
    (the same number of patches under another path) is noted and accepted.
    """
    info: dict[str, Any] = json.loads((out / "run.json").read_text())
    if info["patches"] != count:
        raise ResumeError(
            f"{out} was trained on {info['patches']} patches from {info['data']}; {data} "
            f"gives {count}: resume it on its own data or start a new run"
        )
    if main_rank and info["data"] != str(data.resolve()):
        print(
            f"scrapscan-train: note: {out} was trained on {info['data']}; going on with "
            f"{data}, which gives the same {count} patches",
            file=sys.stderr,
        )
    return info


def class_weights(pixels: Sequence[int], cfg: RunConfig) -> torch.Tensor:
    """The loss's class weights from the training set's labelled pixels per class.

    With binary prompts the contaminant classes count together against normal.
    """
    counts = list(pixels)
    if cfg.model.prompt_mode == "binary":  # normal vs all contaminants together
        counts = [counts[0], sum(counts[1:])]
    return class_balanced_weights(counts, cfg.train.class_balance_beta)


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
) -> int:
    """Train; returns 0 when done, 130 when interrupted (checkpoint written either way).

    `init_from` (a new run only): the checkpoint or bundle to take the weights from.
    """
    env = setup_distributed(device)
    _check_run_folder(out, cfg, resume, env.main)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    start = None if init_from is None else init_weights(init_from, model)
    model = model.to(env.device)
    patches = PatchSet.for_config(load_frames(data), cfg)
    resumed = _check_resumed_data(out, data, len(patches), env.main) if resume else None
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
    info = resumed or _prepare_run(out, cfg, data, patches, counts, env.main, start)
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
