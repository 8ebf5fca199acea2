"""Fixtures for the model tests: the tiny config and a model built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import RunConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def tiny_config() -> RunConfig:
    return load_config(CONFIGS / "tiny.yaml")


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 518, 518)
