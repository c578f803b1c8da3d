#!/usr/bin/env bash
# Time `vit-batch report` on a synthetic run of ROWS rows and CLASSES classes
# (default 50,000 x 1,000; every 21st row a failed file). The run folder is real
# Parquet + metrics.json written through the library (examples/report_bench_run.rs).
# Usage: benches/report_bench.sh [ROWS] [CLASSES]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-50000}
classes=${2:-1000}
cargo build --release --quiet --bin vit-batch --example report_bench_run
target=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$target/release/examples/report_bench_run" "$dir/run" "$rows" "$classes"
for i in 1 2 3; do
  start=$(date +%s.%N)
  "$target/release/vit-batch" report "$dir/run" --format html,png,md,json 2>/dev/null
  end=$(date +%s.%N)
  echo "run $i: $(echo "$end - $start" | bc) s"
done
ls -l "$dir/run/report.html" "$dir/run/report.json" "$dir/run/report.md" | awk '{print $5, $9}'
du -sh "$dir/run/charts"
