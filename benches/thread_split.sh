#!/usr/bin/env bash
# Does the thread split matter? (indicative; run on a quiet machine for real figures)
#
#   vit-batch --threads T (T ORT intra-op threads + a T-thread decode pool) for each
#             T in BENCH_SPLIT_VB_THREADS, and --batch-size B for each B in
#             BENCH_SPLIT_BATCHES (peak RSS vs batch size = memory held per batch);
#   peer      ORT intra-op threads I / decode threads D / spinning on|off for each
#             I:D:spin in BENCH_SPLIT_PEER (vit-batch cannot split its threads or
#             change spinning from the command line; the peer can, so it stands in);
#   ceiling   spinning on vs off (ort_ceiling.py --spin on / off).
#
# Environment (defaults): BENCH_SPLIT_MODEL=vit-tiny-patch16-224 BENCH_IMAGES=96
#   BENCH_SPLIT_VB_THREADS="1 2 3 4" BENCH_SPLIT_BATCHES="8 32 64"
#   BENCH_SPLIT_PEER="2:2:on 2:1:on 2:2:off 2:1:off 1:1:off" BENCH_REPEATS=1 BENCH_THREADS=2
#   BENCH_WORK, BENCH_PY, VIT_BATCH, ORT_DYLIB_PATH as in score_bench.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_IMAGES="${BENCH_SPLIT_IMAGES:-${BENCH_IMAGES:-96}}"
BENCH_SPLIT_MODEL="${BENCH_SPLIT_MODEL:-vit-tiny-patch16-224}"
BENCH_SPLIT_VB_THREADS="${BENCH_SPLIT_VB_THREADS:-1 2 3 4}"
BENCH_SPLIT_BATCHES="${BENCH_SPLIT_BATCHES:-8 32 64}"
BENCH_SPLIT_PEER="${BENCH_SPLIT_PEER:-2:2:on 2:1:on 2:2:off 2:1:off 1:1:off}"
BENCH_REPEATS="${BENCH_REPEATS:-1}"

check_env
LM="$(label_map)"
DATA="$(make_data "$BENCH_IMAGES")"
MD="$(export_model "$BENCH_SPLIT_MODEL")"
N="$BENCH_IMAGES" B="$BENCH_BATCH" T="$BENCH_THREADS"
RUNS="$BENCH_WORK/runs/split"; mkdir -p "$RUNS"
ROWS=()

best_of() { # NAME CMD... -> best own rate in OWN, its wall rate WALLR, its peak PEAK
  local name="$1"; shift; OWN=""; WALLR=""; PEAK=""
  local r own
  for ((r = 1; r <= BENCH_REPEATS; r++)); do
    timed "split-$name-r$r" "$@"
    if [[ "$1" == "$VB" ]]; then
      own=$(vb_field "$RUNS/vb" "round(m['throughput']['images_per_s'],2)")
    else
      own=$(result_field "$BENCH_WORK/logs/split-$name-r$r.log" images_per_s)
    fi
    if [[ -z "$OWN" ]] || awk -v a="$own" -v b="$OWN" 'BEGIN{exit !(a>b)}'; then
      OWN="$own"; WALLR=$(div "$N" "$WALL_S"); PEAK="$PEAK_MB"
    fi
  done
}

for t in $BENCH_SPLIT_VB_THREADS; do
  log "vit-batch --threads $t --batch-size $B"
  best_of "vb-t$t-b$B" "$VB" score "$DATA" --model "$MD" --out "$RUNS/vb" --threads "$t" \
    --batch-size "$B" --label-map "$LM" --quiet --overwrite
  ROWS+=("vit-batch|$t ORT + $t decode (--threads $t), batch $B|$OWN|$WALLR|$PEAK")
done
for b in $BENCH_SPLIT_BATCHES; do
  [[ "$b" == "$B" ]] && [[ " $BENCH_SPLIT_VB_THREADS " == *" $T "* ]] && continue
  log "vit-batch --threads $T --batch-size $b"
  best_of "vb-t$T-b$b" "$VB" score "$DATA" --model "$MD" --out "$RUNS/vb" --threads "$T" \
    --batch-size "$b" --label-map "$LM" --quiet --overwrite
  ROWS+=("vit-batch|$T ORT + $T decode (--threads $T), batch $b|$OWN|$WALLR|$PEAK")
done
for c in $BENCH_SPLIT_PEER; do
  IFS=: read -r i d s <<<"$c"
  spin=(); [[ "$s" == off ]] && spin=(--no-spin)
  log "peer intra $i decode $d spinning $s"
  best_of "peer-$i-$d-$s" "$BENCH_PY" "$BENCH_DIR/peer_score.py" "$DATA" --model "$MD" \
    --out "$RUNS/peer.csv" --threads "$i" --decode-workers "$d" --batch-size "$B" \
    --label-map "$LM" "${spin[@]}"
  ROWS+=("peer|$i ORT + $d decode, spinning $s, batch $B|$OWN|$WALLR|$PEAK")
done
for s in on off; do
  log "ceiling spinning $s"
  best_of "ceiling-$s" "$BENCH_PY" "$BENCH_DIR/ort_ceiling.py" "$DATA" --model "$MD" \
    --threads "$T" --batch-size "$B" --spin "$s"
  ROWS+=("ceiling|$T ORT, spinning $s, batch $B (session.run only)|$OWN|n/a|$PEAK")
done

OUT_MD="$BENCH_WORK/thread_split.md"
{
  echo "## Thread split ($BENCH_SPLIT_MODEL, $N JPEGs)"
  echo
  echo "$(date -u +%FT%TZ); $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); best of $BENCH_REPEATS (by own rate). Indicative only on a busy machine."
  echo
  echo "| tool | threads | img/s (own) | img/s (wall) | peak MB |"
  echo "| --- | --- | ---: | ---: | ---: |"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r a b c d e <<<"$r"
    echo "| $a | $b | $c | $d | $e |"
  done
} | tee "$OUT_MD"
log "table written to $OUT_MD"
