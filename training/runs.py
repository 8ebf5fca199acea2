"""A training run's folder: created and checked for a new run, checked for a resumed one.

RUN_DIR/config.yaml holds the resolved configuration and RUN_DIR/run.json the git
revision, the data folder and its class statistics (scrapscan-train's --help lists the
rest). A resumed run must keep its settings, except RESUMABLE ones, and its data's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import yaml

from training.checkpoint import CHECKPOINT
from training.config import ConfigError, RunConfig, load_config
from training.data import PatchSet
from training.losses import class_balanced_weights
from training.region.data import negative_regions


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


def check_run_folder(out: Path, cfg: RunConfig, resume: bool, main_rank: bool) -> None:
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


def prepare_run(
    out: Path,
    cfg: RunConfig,
    data: Path,
    patches: PatchSet,
    counts: npt.NDArray[np.int64] | None,
    main_rank: bool,
    start: dict[str, Any] | None = None,
    hard: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create the (checked) folder of a new run; returns run.json's content.

    `start`: where the weights came from (`init_weights`), when not from the config;
    `hard`: the hard negatives' patches (`hard_negative_patches`), which a resumed run
    takes from run.json.
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
        **({"hard_negatives": hard} if hard else {}),
    }
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        (out / "run.json").write_text(json.dumps(info, indent=2))
    return info


class HardNegativesError(ValueError):
    """A --hard-negatives file cannot be used; the message names it and says why."""


def hard_negative_patches(path: Path, patches: PatchSet, min_score: float = 0.0) -> dict[str, Any]:
    """The patches holding a false region of `path` (false_regions.json) scoring min_score+.

    Returns {"file", "regions", "patches"} for run.json. HardNegativesError naming the
    file when it is not a false_regions.json or lists no such region on the data's frames.
    """
    index = {id(f): i for i, f in enumerate(patches.frames.frames)}
    boxes: dict[int, list[tuple[int, int, int, int]]] = {}
    try:
        regions = [r for r in negative_regions(path, patches.frames) if r.score >= min_score]
    except ValueError as err:
        raise HardNegativesError(str(err)) from None
    for r in regions:
        boxes.setdefault(index[id(r.frame)], []).append(r.box)
    if not regions:
        raise HardNegativesError(
            f"{path}: lists no region scoring at least {min_score:g} on the frames of "
            f"{patches.frames.root}"
        )
    return {
        "file": str(path.resolve()),
        "min_score": min_score,
        "regions": len(regions),
        "patches": patches.holding(boxes),
    }


class ResumeError(ValueError):
    """A run cannot be resumed with the settings given; the message says why."""


RESUMABLE: frozenset[str] = frozenset(
    {"name", "train.epochs", "train.num_workers", "train.grad_checkpointing"}
)
"""Settings a resumed run may change: how long and how it runs, not what it computes."""


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


def check_resumed_data(out: Path, data: Path, count: int, main_rank: bool) -> dict[str, Any]:
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
