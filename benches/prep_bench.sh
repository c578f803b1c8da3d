#!/usr/bin/env bash
# Stage 2 alone: single-thread decode + preprocess cost per image, vit-batch
# (crates/vit-batch-preprocess, zune-jpeg + fast_image_resize) beside Pillow + numpy
# (benches/prep_peer.py), same files, same 224x224 bilinear ViT preprocessing.
#   benches/prep_bench.sh [DIR]     (default: the 600-JPEG bench folder)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_env
DIR="${1:-$(make_data "$BENCH_IMAGES")}"
cd "$REPO"
cargo run --release -q -p vit-batch-preprocess --example prep_bench -- "$DIR" 224 3
"$BENCH_PY" benches/prep_peer.py "$DIR" 224 3
