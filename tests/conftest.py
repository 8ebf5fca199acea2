"""Shared fixtures: synthetic data folders built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import RunConfig, load_config
from training.synth import write_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SMALL = (1280, 720)  # a third of 4K: same scenes, faster tests


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic frames at 1280x720, seed 7 (COCO layout with masks/)."""
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, frames=8, seed=7, width=SMALL[0], height=SMALL[1], workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_config() -> RunConfig:
    """configs/tiny.yaml: the tiny CLIP with random weights."""
    return load_config(CONFIGS / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_config: RunConfig) -> Path:
    """A scrapscan-train checkpoint of the tiny model as built after torch.manual_seed(0)."""
    import schedulefree
    import torch

    from training.model import build_model
    from training.train import Position, save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_config.model).eval()
    opt = schedulefree.AdamWScheduleFree([p for p in model.parameters() if p.requires_grad])
    opt.eval()
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(path, model, opt, Position(1, 0, 3), tiny_config)
    return path
