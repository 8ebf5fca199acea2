#!/usr/bin/env bash
# Train the tiny config on synthetic 4K frames and evaluate it on held-out frames.
# Usage: benchmarks/train_tiny.sh [WORK_DIR]   (default /tmp/scrapscan-train-tiny)
# Prints the training time and the evaluation's metrics; see BENCHMARKS.md for figures.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/scrapscan-train-tiny}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$work"
[ -f "$work/train/annotations.json" ] || $py -m training.synth --out "$work/train" --frames 40 --seed 100 --workers 2
[ -f "$work/test/annotations.json" ] || $py -m training.synth --out "$work/test" --frames 10 --seed 200 --workers 2
rm -rf "$work/run" "$work/report"
start=$(date +%s)
$py -m training --config configs/tiny.yaml --data "$work/train" --out "$work/run"
echo "training took $(( $(date +%s) - start )) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
$py -m training.evaluate --checkpoint "$work/run/checkpoint.pt" --data "$work/test" --out "$work/report"
