"""Checkpoint files of scrapscan-train: writing, resuming, and loading a trained model.

RUN_DIR/checkpoint.pt holds the model's and the optimizer's state, where the run stands
(`Position`) and the run's configuration, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import BinaryMode, ConfigError, RunConfig, parse_config
from training.model import ScrapAnomalyModel, build_model

CHECKPOINT = "checkpoint.pt"
"""The checkpoint's name in a run folder."""


@dataclass(slots=True)
class Position:
    """Where training stands: epochs done, batches done in the current epoch, steps in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file."""


def save_checkpoint(
    path: Path, model: ScrapAnomalyModel, optimizer: Any, pos: Position, cfg: RunConfig
) -> None:
    """Write the checkpoint atomically. Model and optimizer must be in eval mode."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "position": {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step},
            "config": cfg.model_dump(mode="json"),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: ScrapAnomalyModel, optimizer: Any | None = None) -> Position:
    """Restore weights (and optimizer state) from `path`; returns where the run stood."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return Position(**state["position"])


def load_trained(
    path: Path, device: torch.device | str = "cpu", binary_mode: BinaryMode | None = None
) -> tuple[ScrapAnomalyModel, RunConfig]:
    """The model of a scrapscan-train checkpoint, in eval mode, and its configuration.

    `binary_mode` replaces the trained config's way of forming the binary anomaly map
    (it changes no weight: the map is formed from the same outputs at inference).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as err:  # torch.load raises many kinds on a foreign file
        raise CheckpointError(f"{path}: not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise CheckpointError(f"{path}: not a scrapscan-train checkpoint (no model or config)")
    try:
        cfg = parse_config(state["config"], str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    if binary_mode is not None:
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"binary_mode": binary_mode})}
        )
    model = build_model(cfg.model.model_copy(update={"pretrained": None}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
