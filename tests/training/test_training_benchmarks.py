"""The training benchmarks run on the tiny config and say what they measured."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def bench(script, *args):
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_step_benchmark_runs_the_tiny_config():
    done = bench(
        "train_step.py",
        "--config",
        "configs/tiny.yaml",
        "--batch",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    assert "trainable parameters" in done.stdout and "step: median" in done.stdout
    assert "fp32 on cpu" in done.stdout


def fit_one_batch(data, *extra):
    return bench("fit_one_batch.py", "--data", str(data), *extra)


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


def map_ceiling(*args):
    return bench("map_ceiling.py", *args)


def test_the_map_ceiling_is_perfect_at_full_resolution_and_lower_on_a_coarse_grid(synth_dir):
    done = map_ceiling(
        "--data", str(synth_dir), "--input-size", "64", "--grid", "64", "4", "--sigma", "0"
    )
    assert done.returncode == 0, done.stderr
    head, full, coarse = done.stdout.splitlines()
    assert head.startswith(f"{synth_dir}: ") and "at 64 px" in head
    ap = {line.split()[1].rstrip(":"): float(line.split()[5]) for line in (full, coarse)}
    assert ap["64"] == pytest.approx(1.0, abs=1e-3)  # the mask itself, up to the bin width
    assert 0.0 < ap["4"] < 0.9


def test_the_map_ceiling_per_class_is_perfect_at_full_resolution_and_lower_when_coarse(
    synth_dir,
):
    done = map_ceiling(
        "--data",
        str(synth_dir),
        "--input-size",
        "64",
        "--grid",
        "64",
        "4",
        "--sigma",
        "0",
        "--per-class",
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert [r[0] for r in rows] == ["motor", "cable", "spray_can"] * 2
    full, coarse = rows[:3], rows[3:]
    for f, c in zip(full, coarse, strict=True):
        if f[1] == "none":
            continue
        assert float(f[2]) == pytest.approx(1.0, abs=1e-3)
        assert float(c[2]) < 0.9
    assert any(f[1] == "AP" for f in full)  # the frames hold some class


def test_the_map_ceiling_refuses_a_grid_finer_than_the_patch_and_names_missing_data(tmp_path):
    done = map_ceiling("--data", str(tmp_path), "--input-size", "64", "--grid", "65")
    assert done.returncode == 2 and "--grid must be in 1..64" in done.stderr
    done = map_ceiling("--data", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere" in done.stderr
