#!/usr/bin/env bash
# Scoring throughput and memory: vit-batch vs the Python peer vs the ORT ceiling.
#
# For each model (exported here with vit-batch's own exporter: random init, seed 0,
# 10 labels, graph variant = exporter default unless BENCH_VARIANT is set):
#   ceiling   benches/ort_ceiling.py  session.run only on pre-made tensors
#   peer      benches/peer_score.py   Pillow + numpy + onnxruntime, decode prefetch
#   vit-batch vit-batch score         (label map class_XX -> LABEL_X)
# all with the same --threads and --batch-size, on the same JPEG ImageFolder
# (benches/make_bench_data.py). Then vit-batch's peak RSS on BENCH_IMAGES vs
# BENCH_MEM_IMAGES images (must stay within 10%: memory is flat in the dataset size).
#
# Figures per run:
#   img/s wall  = images / wall time of the WHOLE command (process start, model load,
#                 walk, scoring, output writing, exit), measured by this script;
#   img/s own   = the tool's own figure (vit-batch: metrics.json throughput, from the
#                 first batch to the last row, after session creation; peer: first
#                 decode to last row written; ceiling: session.run only);
#   x ceiling   = own / ceiling own;  x peer = own / peer own (and the wall ratio);
#   peak MB     = GNU time "Maximum resident set size".
#
# Environment (defaults):
#   BENCH_MODELS="vit-tiny-patch16-224 vit-small-patch16-224"   (vit-micro for a smoke test)
#   BENCH_IMAGES=600  BENCH_MEM_IMAGES=6000 (0 = skip the memory check)
#   BENCH_MEM_MODEL=vit-tiny-patch16-224  BENCH_MEM_REPEATS=2 (max peak of N runs per size)
#   BENCH_THREADS=2  BENCH_BATCH=32  BENCH_REPEATS=1 (best of N by wall time)
#   BENCH_VARIANT= (standard|fused; empty = exporter default)
#   BENCH_WORK=/tmp/vit-bench (models, data, runs, logs; models and data are cached)
#   BENCH_PY=/work/.venvs/bench/bin/python  VIT_BATCH=(target dir)/release/vit-batch
#   ORT_DYLIB_PATH=.ort/<version>/libonnxruntime.so.<version> (version: scripts/ort-version)
#   BENCH_STRICT=0 (1: exit 1 when a target is missed)
#
#   benches/score_bench.sh                                      # full run
#   BENCH_MODELS=vit-micro BENCH_IMAGES=40 BENCH_MEM_IMAGES=400 benches/score_bench.sh   # smoke
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_MODELS="${BENCH_MODELS:-vit-tiny-patch16-224 vit-small-patch16-224}"
BENCH_MEM_IMAGES="${BENCH_MEM_IMAGES:-6000}"
BENCH_MEM_MODEL="${BENCH_MEM_MODEL:-vit-tiny-patch16-224}"
BENCH_REPEATS="${BENCH_REPEATS:-1}"
BENCH_MEM_REPEATS="${BENCH_MEM_REPEATS:-2}"
BENCH_STRICT="${BENCH_STRICT:-0}"

check_env
LM="$(label_map)"
DATA="$(make_data "$BENCH_IMAGES")"
T="$BENCH_THREADS" B="$BENCH_BATCH" N="$BENCH_IMAGES"
RUNS="$BENCH_WORK/runs"; mkdir -p "$RUNS"
VARIANT_NOTE="${BENCH_VARIANT:-exporter default (fused)}"
if ! "$VB" export --help 2>/dev/null | grep -q -- '--variant'; then
  if [[ -n "$BENCH_VARIANT" ]]; then die "this vit-batch export has no --variant flag"; fi
  VARIANT_NOTE="n/a (exporter has no --variant flag)"
fi

log "vit-batch: $VB ($("$VB" --version 2>/dev/null))"
log "data: $DATA ($N images); threads $T, batch $B, repeats $BENCH_REPEATS; variant: $VARIANT_NOTE"

ROWS=()   # model|tool|wall_rate|own_rate|peak_mb|top1
NOTES=()
MISSES=0
note() { NOTES+=("$1"); if [[ "$1" == *MISS* ]]; then MISSES=$((MISSES + 1)); fi; }

# run_best NAME CMD... -> sets BEST_WALL, BEST_PEAK, BEST_LOG (best of BENCH_REPEATS by wall)
run_best() {
  local name="$1"; shift
  BEST_WALL=""; BEST_PEAK=""; BEST_LOG=""
  local r
  for ((r = 1; r <= BENCH_REPEATS; r++)); do
    timed "$name-r$r" "$@"
    if [[ -z "$BEST_WALL" ]] || awk -v a="$WALL_S" -v b="$BEST_WALL" 'BEGIN{exit !(a<b)}'; then
      BEST_WALL="$WALL_S"; BEST_PEAK="$PEAK_MB"; BEST_LOG="$BENCH_WORK/logs/$name-r$r.log"
      if [[ -d "$RUNS/$name" ]]; then rm -rf "$RUNS/$name.best"; cp -r "$RUNS/$name" "$RUNS/$name.best"; fi
    fi
  done
}

for model in $BENCH_MODELS; do
  MD="$(export_model "$model")"
  log "== $model ($MD)"

  log "ceiling"
  run_best "ceiling-$model" "$BENCH_PY" "$BENCH_DIR/ort_ceiling.py" "$DATA" --model "$MD" \
    --threads "$T" --batch-size "$B"
  c_own=$(result_field "$BEST_LOG" images_per_s)
  ROWS+=("$model|ORT ceiling (session.run only)|n/a|$c_own|$BEST_PEAK|")

  log "peer"
  run_best "peer-$model" "$BENCH_PY" "$BENCH_DIR/peer_score.py" "$DATA" --model "$MD" \
    --out "$RUNS/peer-$model.csv" --threads "$T" --batch-size "$B" --label-map "$LM"
  p_own=$(result_field "$BEST_LOG" images_per_s)
  p_top1=$(result_field "$BEST_LOG" top1)
  p_wall=$(div "$N" "$BEST_WALL"); p_peak="$BEST_PEAK"
  ROWS+=("$model|Python peer (Pillow + onnxruntime)|$p_wall|$p_own|$p_peak|$p_top1")

  log "vit-batch"
  run_best "vb-$model" "$VB" score "$DATA" --model "$MD" --out "$RUNS/vb-$model" \
    --batch-size "$B" --threads "$T" --label-map "$LM" --quiet --overwrite
  v_own=$(vb_field "$RUNS/vb-$model.best" "round(m['throughput']['images_per_s'],3)")
  v_top1=$(vb_field "$RUNS/vb-$model.best" "m['top1']")
  v_n=$(vb_field "$RUNS/vb-$model.best" "m['counts']['ok']")
  v_wall=$(div "$N" "$BEST_WALL"); v_peak="$BEST_PEAK"
  ROWS+=("$model|vit-batch score|$v_wall|$v_own|$v_peak|$v_top1")

  [[ "$v_n" == "$N" ]] || note "$model: WARNING vit-batch scored $v_n of $N images ok"
  # Same model + same preprocessing semantics: top-1 should agree to within an image or two.
  d=$(awk -v a="$v_top1" -v b="$p_top1" -v n="$N" 'BEGIN{d=(a-b)*n; if(d<0)d=-d; printf "%.0f", d}')
  if (( d > 2 )); then note "$model: WARNING top-1 differs by $d images between vit-batch ($v_top1) and the peer ($p_top1)"; fi

  cmp=$("$BENCH_PY" "$BENCH_DIR/compare_preds.py" "$RUNS/vb-$model.best/predictions.parquet" "$RUNS/peer-$model.csv" 2>&1 | tail -1)
  note "$model: vit-batch vs peer predictions: ${cmp#compare: } (random-init logits are near-uniform, so a near-tie can flip)"
  xc=$(div "$v_own" "$c_own"); xp=$(div "$v_own" "$p_own"); xpw=$(div "$v_wall" "$p_wall")
  case "$model" in
    *tiny*)
      ok=$(awk -v x="$xc" 'BEGIN{print (x>=0.9)?"ok":"MISS"}')
      note "$model: vit-batch = ${xc}x ceiling (target >= 0.9x): $ok"
      ok=$(awk -v x="$xp" 'BEGIN{print (x>=1.2)?"ok":"MISS"}')
      note "$model: vit-batch = ${xp}x peer own rate, ${xpw}x wall (target ~1.2x): $ok" ;;
    *small*)
      ok=$(awk -v x="$xp" -v w="$xpw" 'BEGIN{print (x>=1.0 && w>=1.0)?"ok":"MISS"}')
      note "$model: vit-batch = ${xp}x peer own rate, ${xpw}x wall (target >= 1.0x): $ok" ;;
    *) note "$model: vit-batch = ${xc}x ceiling, ${xp}x peer (own), ${xpw}x peer (wall); no target for this model" ;;
  esac
  ok=$(awk -v a="$v_peak" -v b="$p_peak" 'BEGIN{print (a<b)?"ok":"MISS"}')
  note "$model: peak RSS vit-batch $v_peak MB vs peer $p_peak MB (target: below the peer): $ok"
done

if (( BENCH_MEM_IMAGES > 0 )); then
  log "== memory: $BENCH_MEM_MODEL, $N vs $BENCH_MEM_IMAGES images"
  MD="$(export_model "$BENCH_MEM_MODEL")"
  BIG="$(make_data "$BENCH_MEM_IMAGES")"
  # Peak RSS varies by a few MB run to run (allocator arenas, thread timing): the
  # largest of BENCH_MEM_REPEATS runs per size is compared.
  m_small=0 m_big=0 all_small="" all_big=""
  for ((r = 1; r <= BENCH_MEM_REPEATS; r++)); do
    timed "mem-small-r$r" "$VB" score "$DATA" --model "$MD" --out "$RUNS/mem-small" \
      --batch-size "$B" --threads "$T" --label-map "$LM" --quiet --overwrite
    all_small+="${all_small:+, }$PEAK_MB"; m_small_rate=$(div "$N" "$WALL_S")
    m_small=$(awk -v a="$m_small" -v b="$PEAK_MB" 'BEGIN{print (b>a)?b:a}')
    timed "mem-big-r$r" "$VB" score "$BIG" --model "$MD" --out "$RUNS/mem-big" \
      --batch-size "$B" --threads "$T" --label-map "$LM" --quiet --overwrite
    all_big+="${all_big:+, }$PEAK_MB"; m_big_rate=$(div "$BENCH_MEM_IMAGES" "$WALL_S")
    m_big=$(awk -v a="$m_big" -v b="$PEAK_MB" 'BEGIN{print (b>a)?b:a}')
  done
  ratio=$(div "$m_big" "$m_small")
  ok=$(awk -v r="$ratio" 'BEGIN{print (r<=1.10 && r>=0.90)?"ok":"MISS"}')
  note "memory ($BENCH_MEM_MODEL): vit-batch peak RSS $m_small MB on $N images (runs: $all_small; $m_small_rate img/s wall), $m_big MB on $BENCH_MEM_IMAGES images (runs: $all_big; $m_big_rate img/s wall): ${ratio}x (target within 10%): $ok"
fi

OUT_MD="$BENCH_WORK/score_bench.md"
{
  echo "## Scoring benchmark"
  echo
  echo "$(date -u +%FT%TZ); $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $N JPEGs ($BENCH_CLASSES classes);"
  echo "threads $T, batch $B, best of $BENCH_REPEATS; graph variant: $VARIANT_NOTE; vit-batch $("$VB" --version 2>/dev/null | awk '{print $2}') @ $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'); onnxruntime $("$BENCH_PY" -c 'import onnxruntime;print(onnxruntime.__version__)')"
  echo
  echo "img/s wall: images / wall time of the whole command (start-up and output included). img/s own: the tool's own figure (ceiling: session.run only). x ceiling / x peer: own-rate ratios. Peak MB: GNU time maximum RSS (the ceiling holds every tensor in memory, so its RSS is not comparable)."
  echo
  echo "| model | tool | img/s (wall) | img/s (own) | x ceiling | x peer | peak MB | top-1 |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  declare -A CEIL PEER
  for r in "${ROWS[@]}"; do
    IFS='|' read -r m tool wall own peak top1 <<<"$r"
    if [[ "$tool" == ORT* ]]; then CEIL[$m]="$own"; fi
    if [[ "$tool" == Python* ]]; then PEER[$m]="$own"; fi
  done
  for r in "${ROWS[@]}"; do
    IFS='|' read -r m tool wall own peak top1 <<<"$r"
    xc=$(div "$own" "${CEIL[$m]}"); xp=$(div "$own" "${PEER[$m]:-0}")
    if [[ "$tool" == ORT* ]]; then xp="—"; fi
    if [[ -n "$top1" ]]; then top1=$(awk -v t="$top1" 'BEGIN{printf "%.2f%%", 100*t}'); else top1="—"; fi
    printf '| %s | %s | %s | %.1f | %s | %s | %s | %s |\n' "$m" "$tool" "$wall" "$own" "$xc" "$xp" "$peak" "$top1"
  done
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
} | tee "$OUT_MD"
log "table written to $OUT_MD; logs in $BENCH_WORK/logs"
if [[ "$BENCH_STRICT" == 1 && $MISSES -gt 0 ]]; then exit 1; fi
