# Shared helpers for benches/*.sh (sourced, not run).
# shellcheck shell=bash

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

BENCH_PY="${BENCH_PY:-/work/.venvs/bench/bin/python}"
BENCH_WORK="${BENCH_WORK:-/tmp/vit-bench}"
BENCH_THREADS="${BENCH_THREADS:-2}"
BENCH_BATCH="${BENCH_BATCH:-32}"
BENCH_IMAGES="${BENCH_IMAGES:-600}"
BENCH_CLASSES="${BENCH_CLASSES:-10}"
BENCH_SEED="${BENCH_SEED:-0}"
# Exporter graph variant: standard | fused (empty = the exporter's default, fused; the
# model cache is named after the variant actually exported).
BENCH_VARIANT="${BENCH_VARIANT:-}"
ORT_VERSION="$(cat "$REPO/scripts/ort-version")"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$REPO/.ort/$ORT_VERSION/libonnxruntime.so.$ORT_VERSION}"

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

find_vit_batch() {
  if [[ -n "${VIT_BATCH:-}" ]]; then echo "$VIT_BATCH"; return; fi
  local td
  td="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | "$BENCH_PY" -c "import json,sys;print(json.load(sys.stdin)['target_directory'])")" \
    || die "cargo metadata failed; set VIT_BATCH=/path/to/vit-batch"
  echo "$td/release/vit-batch"
}

check_env() {
  VB="$(find_vit_batch)"
  [[ -x "$VB" ]] || die "no vit-batch binary at $VB (cargo build --release with the same CARGO_TARGET_DIR, or set VIT_BATCH)"
  [[ -x "$BENCH_PY" ]] || die "no python at $BENCH_PY (python3 -m venv /work/.venvs/bench && /work/.venvs/bench/bin/pip install -r benches/requirements.txt)"
  [[ -f "$ORT_DYLIB_PATH" ]] || die "no ONNX Runtime library at $ORT_DYLIB_PATH (set ORT_DYLIB_PATH)"
  [[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS"
  "$BENCH_PY" -c "import PIL, numpy, onnxruntime" || die "$BENCH_PY lacks pillow/numpy/onnxruntime"
  mkdir -p "$BENCH_WORK"
}

# export_model PRESET -> prints the model folder (cached in $BENCH_WORK/models).
export_model() {
  local preset="$1" v="${BENCH_VARIANT:-fused}"
  local dir="$BENCH_WORK/models/$preset-seed$BENCH_SEED-k$BENCH_CLASSES-$v"
  if [[ ! -f "$dir/model.onnx" || ! -f "$dir/preprocessor_config.json" ]]; then
    rm -rf "$dir"
    local vflag=()
    if [[ -n "$BENCH_VARIANT" ]]; then vflag=(--variant "$BENCH_VARIANT"); fi
    "$VB" export --preset "$preset" --random-init --seed "$BENCH_SEED" \
      --num-labels "$BENCH_CLASSES" --out "$dir" "${vflag[@]}" >&2 \
      || die "export of $preset failed"
  fi
  echo "$dir"
}

# make_data N -> prints the data folder (cached; regenerated if the count differs).
make_data() {
  local n="$1" dir="$BENCH_WORK/data-$1-c$BENCH_CLASSES-s$BENCH_SEED"
  local have
  have=$(find "$dir" -name '*.jpg' 2>/dev/null | wc -l)
  if [[ "$have" -ne "$n" || ! -f "$dir/.complete" ]]; then
    "$BENCH_PY" "$BENCH_DIR/make_bench_data.py" --out "$dir" --count "$n" \
      --classes "$BENCH_CLASSES" --seed "$BENCH_SEED" --overwrite >&2 || die "make_bench_data failed"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# label_map -> prints a CSV mapping class_XX to LABEL_X.
label_map() {
  local f="$BENCH_WORK/label_map-c$BENCH_CLASSES.csv"
  { echo "folder,label"; for ((i = 0; i < BENCH_CLASSES; i++)); do printf 'class_%02d,LABEL_%d\n' "$i" "$i"; done; } >"$f"
  echo "$f"
}

# timed NAME CMD... : runs CMD under GNU time; sets WALL_S, PEAK_MB, and keeps the
# command's stdout+stderr in $BENCH_WORK/logs/NAME.log. Fails the script if CMD fails.
timed() {
  local name="$1"; shift
  mkdir -p "$BENCH_WORK/logs"
  local tf="$BENCH_WORK/logs/$name.time" lf="$BENCH_WORK/logs/$name.log"
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$tf" "$@" >"$lf" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  if [[ $rc -ne 0 ]]; then
    tail -20 "$lf" >&2
    die "$name failed (exit $rc); log: $lf"
  fi
  WALL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  PEAK_MB=$(awk -F: '/Maximum resident set size/{printf "%.1f", $2/1024}' "$tf")
}

# result_field LOG KEY -> value of KEY= on the RESULT line of a python tool's log.
result_field() {
  grep '^RESULT ' "$1" | tail -1 | tr ' ' '\n' | awk -F= -v k="$2" '$1==k{print $2}'
}

# vb_rate RUN_DIR -> vit-batch's own images/s from metrics.json.
vb_field() {
  "$BENCH_PY" -c "import json,sys;m=json.load(open(sys.argv[1]+'/metrics.json'));print(eval(sys.argv[2],{},{'m':m}))" "$1" "$2"
}

div() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0==0) print "n/a"; else printf "%.2f", a/b }'; }
