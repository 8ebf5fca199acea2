"""Fixtures for the model tests (the tiny config itself is in the top conftest)."""

from __future__ import annotations

import pytest
import torch

from ..conftest import CONFIGS

__all__ = ["CONFIGS"]


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 518, 518)
