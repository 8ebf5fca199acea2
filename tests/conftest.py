"""Shared fixtures: synthetic data folders built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import write_dataset

SMALL = (1280, 720)  # a third of 4K: same scenes, faster tests


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic frames at 1280x720, seed 7 (COCO layout with masks/)."""
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, frames=8, seed=7, width=SMALL[0], height=SMALL[1], workers=2)
    return out
