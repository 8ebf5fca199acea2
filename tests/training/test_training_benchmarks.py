"""The training benchmarks run on the tiny config and say what they measured."""

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


def fit_one_batch(data, *extra):
    return subprocess.run(
        [sys.executable, "benchmarks/fit_one_batch.py", "--data", str(data), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_one_batch_fit_prints_the_batch_ap(synth_dir):
    done = fit_one_batch(
        synth_dir, "--batch", "2", "--min-pixels", "100", "--steps", "2", "--every", "1"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tiny: 2 patches") and "AP before training" in lines[0]
    assert [line.split()[:2] for line in lines[1:]] == [["step", "1"], ["step", "2"]]
    assert all("AP on the batch" in line for line in lines[1:])


def test_the_one_batch_fit_names_data_without_enough_contaminant(synth_dir):
    done = fit_one_batch(synth_dir, "--min-pixels", "100000000", "--steps", "1")
    assert done.returncode == 2
    assert str(synth_dir) in done.stderr and "lower --min-pixels" in done.stderr
