#!/usr/bin/env bash
# README command #1, on a fresh machine: install the project into .venv if needed, make a short synthetic
# two-camera drive (a "game"-style camera like the training data and a fog-shifted JPEG camera, both with
# ground-truth label topics), replay it through the bundled tiny model and write the evaluation report.
# A few minutes on 2 CPU cores. Usage: bash scripts/demo.sh [OUT_DIR]   (default: out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
out=${1:-out/demo}
model=models/tiny-eva02-synthetic.safetensors
if [ ! -f "$model" ]; then
    echo "demo: $model is missing; models/README.md says how to train it" >&2
    exit 1
fi
# Only the demo's own outputs are replaced, never the whole folder.
rm -rf "$out/drive" "$out/report"
mkdir -p "$out"
.venv/bin/mfuser-make-demo-bag "$out/drive" --frames 20 --size 256x128 --rate 10 \
    --camera cam_game:game --camera cam_fog:fog:compressed
.venv/bin/mfuser-replay "$out/drive" --checkpoint "$model" --out "$out/report"
echo "demo: open $out/report/report.md (metrics.json, montage.png and the output bag are beside it)"
