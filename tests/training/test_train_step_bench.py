"""benchmarks/train_step.py runs the training loop's own step and says what it measured."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_step_benchmark_runs_the_tiny_config():
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_step.py",
            "--config",
            "configs/tiny.yaml",
            "--batch",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "trainable parameters" in done.stdout and "step: median" in done.stdout
    assert "fp32 on cpu" in done.stdout
