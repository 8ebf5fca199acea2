#!/usr/bin/env bash
# Train the tiny config on synthetic 4K frames and evaluate it on held-out frames.
# Usage: benchmarks/train_tiny.sh [WORK_DIR]   (default /tmp/scrapscan-train-tiny)
# Prints the training time and the evaluation's metrics; see BENCHMARKS.md for figures.
#
# The defaults are a short recipe (40 frames, 3 epochs, about 7 minutes on 2 cores);
# `make demo-bundle` runs the demo bundle's (600 plain-view frames, 12 epochs). Patches
# are cached at model size in WORK_DIR/patch-cache (about 1.1 MB each). Settings from
# the environment:
#   FRAMES=40          training frames (the 10 held-out frames are always seed 200)
#   COVER=             scrap laid over the contaminants, 0..1 (scrapscan-synth's default)
#   EPOCHS=3           train.epochs
#   ANOMALY_SHARE=     train.anomaly_share (the config's default)
#   RESUME=0           1: continue WORK_DIR/run with --resume instead of starting over
# The recipe that reaches held-out AP 0.507 (BENCHMARKS.md, run i), about 3 hours on 2 cores:
#   FRAMES=600 COVER=0 EPOCHS=9 ANOMALY_SHARE=0.5 benchmarks/train_tiny.sh /tmp/tiny-plain
# A run stopped with Ctrl-C goes on with the same settings and RESUME=1.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/scrapscan-train-tiny}
py=${PYTHON:-.venv/bin/python}
frames=${FRAMES:-40}
epochs=${EPOCHS:-3}
resume=${RESUME:-0}
cover=()
[ -z "${COVER:-}" ] || cover=(--cover "$COVER")
mkdir -p "$work"
[ -f "$work/train/annotations.json" ] ||
    $py -m training.synth --out "$work/train" --frames "$frames" --seed 100 --workers 2 "${cover[@]}"
[ -f "$work/test/annotations.json" ] ||
    $py -m training.synth --out "$work/test" --frames 10 --seed 200 --workers 2 "${cover[@]}"
EPOCHS=$epochs $py - "$work/config.yaml" <<'EOF'
import os
import sys

import yaml

cfg = yaml.safe_load(open("configs/tiny.yaml"))
cfg["train"]["epochs"] = int(os.environ["EPOCHS"])
if os.environ.get("ANOMALY_SHARE"):
    cfg["train"]["anomaly_share"] = float(os.environ["ANOMALY_SHARE"])
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
EOF
rm -rf "$work/report"
if [ "$resume" = 1 ]; then
    train=(--resume)
else
    rm -rf "$work/run"
    train=()
fi
start=$(date +%s)
$py -m training --config "$work/config.yaml" --data "$work/train" --out "$work/run" \
    --patch-cache "$work/patch-cache" "${train[@]}"
echo "training took $(( $(date +%s) - start )) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
$py -m training.evaluate --checkpoint "$work/run/checkpoint.pt" --data "$work/test" --out "$work/report"
