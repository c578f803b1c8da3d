#!/usr/bin/env bash
# Time and peak memory of `vit-batch merge` on synthetic shard outputs, and of
# `vit-batch report` on the merged million-row run.
#
#   benches/merge_bench.sh [LAYOUT...]      # LAYOUT = SHARDSxROWS, default:
#                                           # 100x1000 100x10000 1000x1000
#
# The shards are made from a real run (the digits fixture scored with the bundled
# model) by benches/make_merge_shards.py: the real predictions schema, run.json and
# metrics.json of `score --shard K/N`, rows replicated with unique sorted paths.
# Peak memory is the maximum RSS from /usr/bin/time -v. Needs scripts/setup (.venv
# with pyarrow, ONNX Runtime) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
layouts=("$@")
[ ${#layouts[@]} -gt 0 ] || layouts=(100x1000 100x10000 1000x1000)
v=$(cat scripts/ort-version)
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$root/.ort/$v/libonnxruntime.so.$v}
cargo build --release --quiet --bin vit-batch
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/vit-batch"
[ -x /usr/bin/time ] || { echo "merge_bench: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$bin" score fixtures/digits/test --model fixtures/models/vit-digits --out "$dir/template" --quiet

# measure LABEL CMD...: one line "LABEL: wall S s, peak RSS M MB".
measure() {
  local label=$1
  shift
  /usr/bin/time -v "$@" >/dev/null 2>"$dir/time.txt" || { cat "$dir/time.txt" >&2; exit 1; }
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time.txt")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time.txt")
  echo "$label: wall $wall, peak RSS $((rss / 1024)) MB"
}

for l in "${layouts[@]}"; do
  shards=${l%x*}
  rows=${l#*x}
  "$root/.venv/bin/python" benches/make_merge_shards.py "$dir/template" "$dir/s$l" "$shards" "$rows"
  measure "merge $shards shards x $rows rows ($((shards * rows)) rows)" \
    "$bin" merge "$dir/s$l"/shard-* --out "$dir/m$l"
  measure "report of the merged $((shards * rows))-row run" "$bin" report "$dir/m$l"
  rm -rf "$dir/s$l" "$dir/m$l"
done
