#!/usr/bin/env bash
# Shard scaling: images/s with 1, 2 and 4 vit-batch worker processes on one machine.
#
# Each configuration PxT runs P processes `vit-batch score --shard K/P --threads T` at
# once, then `vit-batch merge` of the P shard folders; the figure is the wall clock of
# the whole (first process started -> merge finished). Defaults, for a 2-core box:
#   1x2  1 process  x 2 threads   (the whole machine to one process; --shard 0/1 + merge)
#   2x1  2 processes x 1 thread   (one core each)
#   4x1  4 processes x 1 thread   (oversubscribed: 4 threads on 2 cores)
# (remember each vit-batch process runs T ORT intra-op threads AND a T-thread decode
# pool, so "x1" is 2 busy threads per process when decode and inference overlap.)
#
# Environment (defaults):
#   BENCH_SHARD_CONFIGS="1x2 2x1 4x1"   BENCH_SHARD_MODEL=vit-tiny-patch16-224
#   BENCH_IMAGES=600  BENCH_BATCH=32  BENCH_REPEATS=1 (best of N)  BENCH_WORK=/tmp/vit-bench
#   BENCH_PY, VIT_BATCH, ORT_DYLIB_PATH as in score_bench.sh
#
#   benches/shard_scaling.sh
#   BENCH_SHARD_MODEL=vit-micro BENCH_IMAGES=40 benches/shard_scaling.sh    # smoke
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_SHARD_CONFIGS="${BENCH_SHARD_CONFIGS:-1x2 2x1 4x1}"
BENCH_SHARD_MODEL="${BENCH_SHARD_MODEL:-vit-tiny-patch16-224}"
BENCH_REPEATS="${BENCH_REPEATS:-1}"

check_env
LM="$(label_map)"
DATA="$(make_data "$BENCH_IMAGES")"
MD="$(export_model "$BENCH_SHARD_MODEL")"
N="$BENCH_IMAGES" B="$BENCH_BATCH"
RUNS="$BENCH_WORK/runs/shards"; mkdir -p "$RUNS" "$BENCH_WORK/logs"
log "model $MD; data $DATA ($N images); batch $B; configs: $BENCH_SHARD_CONFIGS"

# one_config P T -> sets C_WALL C_MERGE C_MAXRSS C_SUMRSS C_TOP1 C_IMAGES
one_config() {
  local P="$1" T="$2" k pids=() rc=0
  rm -rf "$RUNS/$P"x"$T"; mkdir -p "$RUNS/$P"x"$T"
  local dir="$RUNS/$P"x"$T"
  local t0 t1 tm
  t0=$(date +%s.%N)
  for ((k = 0; k < P; k++)); do
    /usr/bin/time -v -o "$dir/shard-$k.time" "$VB" score "$DATA" --model "$MD" \
      --out "$dir/shard-$k" --shard "$k/$P" --threads "$T" --batch-size "$B" \
      --label-map "$LM" --quiet >"$dir/shard-$k.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  if [[ $rc -ne 0 ]]; then cat "$dir"/shard-*.log >&2; die "a shard of ${P}x$T failed (exit $rc)"; fi
  tm=$(date +%s.%N)
  shards=()
  for ((k = 0; k < P; k++)); do shards+=("$dir/shard-$k"); done
  "$VB" merge "${shards[@]}" --out "$dir/merged" >"$dir/merge.log" 2>&1 \
    || { cat "$dir/merge.log" >&2; die "merge of ${P}x$T failed"; }
  t1=$(date +%s.%N)
  C_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  C_MERGE=$(awk -v a="$tm" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  C_MAXRSS=$(cat "$dir"/shard-*.time | awk -F: '/Maximum resident/{v=$2/1024; if(v>m)m=v} END{printf "%.1f", m}')
  C_SUMRSS=$(cat "$dir"/shard-*.time | awk -F: '/Maximum resident/{s+=$2/1024} END{printf "%.1f", s}')
  C_TOP1=$(vb_field "$dir/merged" "m['top1']")
  C_IMAGES=$(vb_field "$dir/merged" "m['counts']['ok']")
}

ROWS=()
BASE=""
REF_TOP1=""
for cfg in $BENCH_SHARD_CONFIGS; do
  P="${cfg%x*}" T="${cfg#*x}"
  [[ "$P" =~ ^[0-9]+$ && "$T" =~ ^[0-9]+$ && "$P" -ge 1 && "$T" -ge 1 ]] || die "bad config '$cfg' (want PxT, e.g. 2x1)"
  best=""
  for ((r = 1; r <= BENCH_REPEATS; r++)); do
    log "$cfg: $P process(es) x $T thread(s), run $r"
    one_config "$P" "$T"
    if [[ -z "$best" ]] || awk -v a="$C_WALL" -v b="$best" 'BEGIN{exit !(a<b)}'; then
      best="$C_WALL"; b_merge="$C_MERGE"; b_max="$C_MAXRSS"; b_sum="$C_SUMRSS"
    fi
  done
  [[ "$C_IMAGES" == "$N" ]] || log "WARNING: $cfg merged run has $C_IMAGES ok rows, expected $N"
  if [[ -z "$REF_TOP1" ]]; then REF_TOP1="$C_TOP1"
  elif [[ "$C_TOP1" != "$REF_TOP1" ]]; then log "WARNING: $cfg top-1 $C_TOP1 differs from ${BENCH_SHARD_CONFIGS%% *} ($REF_TOP1)"; fi
  rate=$(div "$N" "$best")
  [[ -z "$BASE" ]] && BASE="$rate"
  ROWS+=("$cfg|$P|$T|$((P * T))|$best|$rate|$(div "$rate" "$BASE")|$b_merge|$b_max|$b_sum")
done

OUT_MD="$BENCH_WORK/shard_scaling.md"
{
  echo "## Shard scaling ($BENCH_SHARD_MODEL)"
  echo
  echo "$(date -u +%FT%TZ); $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $N JPEGs, batch $B, best of $BENCH_REPEATS."
  echo "Wall = first shard process started -> \`vit-batch merge\` finished. --threads T per process (T ORT intra-op threads + a T-thread decode pool each)."
  echo
  echo "| config | processes | --threads each | total --threads | wall s | img/s | x first | merge s | max RSS/process MB | sum RSS MB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r c p t tt w rt x m mx s <<<"$r"
    echo "| $c | $p | $t | $tt | $w | $rt | $x | $m | $mx | $s |"
  done
} | tee "$OUT_MD"
log "table written to $OUT_MD; shard logs under $RUNS"
