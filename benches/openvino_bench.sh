#!/usr/bin/env bash
# Providers and precisions side by side, interleaved (round r runs every configuration
# once before round r+1 starts), so load on a shared machine hits them alike:
#   - inference only (benches/ort_ceiling.py: the bench JPEGs preprocessed
#     beforehand, untimed): ORT CPU fp32, ORT + OpenVINO plugin EP fp32 and bf16;
#   - end to end on the bench JPEGs: vit-batch score and the Python peer
#     (Pillow + onnxruntime, decode overlapped; benches/peer_score.py) with the same
#     three engines; wall of the whole command, each tool's own figure, peak RSS.
# bf16 rows are left out on a CPU without avx512_bf16/amx_bf16 (vit-batch exits 2 there).
#   benches/openvino_bench.sh            knobs: BENCH_MODELS BENCH_IMAGES BENCH_REPEATS
#                                        BENCH_THREADS BENCH_BATCH (see lib.sh)
# Needs the plugin: scripts/setup --openvino, and onnxruntime-ep-openvino in BENCH_PY.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_env
"$BENCH_PY" -c "import onnxruntime_ep_openvino" || die "$BENCH_PY lacks onnxruntime-ep-openvino (pip install -r benches/requirements.txt)"
BENCH_MODELS="${BENCH_MODELS:-vit-tiny-patch16-224 vit-small-patch16-224}"
BENCH_REPEATS="${BENCH_REPEATS:-2}"
T="$BENCH_THREADS"; B="$BENCH_BATCH"
DATA="$(make_data "$BENCH_IMAGES")"
N=$(find "$DATA" -name '*.jpg' | wc -l)
LM="$(label_map)"
RUNS="$BENCH_WORK/runs-openvino"; mkdir -p "$RUNS"
engines=("cpu fp32" "openvino fp32")
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then engines+=("openvino bf16"); fi
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_bf16|amx_int8' | tr '\n' ' ')
out="$BENCH_WORK/openvino_bench.md"
{
  echo "## openvino_bench ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; flags: ${flags:-none}; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$N JPEGs ($DATA), $T threads, batch $B, best of $BENCH_REPEATS interleaved rounds; vit-batch $("$VB" --version | cut -d' ' -f2), ORT $ORT_VERSION, plugin $(cat "$REPO/scripts/openvino-ep-version")"
  echo
  echo "| model | program | engine | img/s (wall) | img/s (own) | peak MB | top-1 |"
  echo "|---|---|---|---:|---:|---:|---:|"
} >"$out"
declare -A best_wall best_own best_peak top1
keep() { # key wall own peak top1
  local k=$1
  if [[ -z "${best_own[$k]:-}" ]] || awk -v a="$3" -v b="${best_own[$k]}" 'BEGIN{exit !(a>b)}'; then
    best_wall[$k]=$2; best_own[$k]=$3; best_peak[$k]=$4; top1[$k]=$5
  fi
}
for model in $BENCH_MODELS; do
  MD="$(export_model "$model")"
  for ((r = 0; r < BENCH_REPEATS; r++)); do
    for e in "${engines[@]}"; do
      set -- $e; p=$1; q=$2; tag="$model-$p-$q-r$r"
      log "round $r: $model $p $q"
      timed "ceil-$tag" "$BENCH_PY" "$BENCH_DIR/ort_ceiling.py" "$DATA" --model "$MD" \
        --threads "$T" --batch-size "$B" --provider "$p" --precision "$q" --spin on
      keep "$model|ONNX Runtime, inference only|$p $q" "-" \
        "$(result_field "$BENCH_WORK/logs/ceil-$tag.log" images_per_s)" "-" "-"
      timed "peer-$tag" "$BENCH_PY" "$BENCH_DIR/peer_score.py" "$DATA" --model "$MD" \
        --out "$RUNS/peer-$tag.csv" --threads "$T" --batch-size "$B" --label-map "$LM" \
        --provider "$p" --precision "$q"
      keep "$model|Python peer (Pillow + onnxruntime)|$p $q" "$(div "$N" "$WALL_S")" \
        "$(result_field "$BENCH_WORK/logs/peer-$tag.log" images_per_s)" "$PEAK_MB" \
        "$(result_field "$BENCH_WORK/logs/peer-$tag.log" top1)"
      timed "vb-$tag" "$VB" score "$DATA" --model "$MD" --out "$RUNS/vb-$model-$p-$q" \
        --batch-size "$B" --threads "$T" --label-map "$LM" --provider "$p" --precision "$q" \
        --quiet --overwrite
      keep "$model|vit-batch score|$p $q" "$(div "$N" "$WALL_S")" \
        "$(vb_field "$RUNS/vb-$model-$p-$q" "round(m['throughput']['images_per_s'],3)")" \
        "$PEAK_MB" "$(vb_field "$RUNS/vb-$model-$p-$q" "m['top1']")"
    done
  done
  for prog in "ONNX Runtime, inference only" "Python peer (Pillow + onnxruntime)" "vit-batch score"; do
    for e in "${engines[@]}"; do
      k="$model|$prog|$e"
      echo "| $model | $prog | $e | ${best_wall[$k]} | $(printf '%.1f' "${best_own[$k]}") | ${best_peak[$k]} | ${top1[$k]} |" >>"$out"
    done
  done
done
cat "$out"
