#!/usr/bin/env bash
# Memory of `vit-batch score` on Hugging Face `datasets` Parquet: peak RSS on 5,000 vs
# 50,000 rows of small images (the digits fixture's 8x8 PNGs, cycled), written by
# `datasets` itself (Dataset.to_parquet, its own row-group layout) and re-written by
# pyarrow in row groups of 500 rows (many groups: the streaming path). The target: the
# 50,000-row run within 1.2x of the 5,000-row run. Peer in the same run: `datasets`
# loading the same file and decoding every image with Pillow (what a Python evaluation
# loop does before any model runs).
#
# Needs a venv with datasets + pillow (the fixture venv of scripts/fixtures/make_datasets.py):
#   python3 -m venv /work/.venvs/dsfix
#   /work/.venvs/dsfix/bin/pip install datasets==4.4.1 webdataset==1.0.2 pillow==12.0.0
# Knobs (env): DATASETS_PY (default /work/.venvs/dsfix/bin/python), BENCH_WORK,
#   HF_ROWS (default "5000 50000"), HF_REPEATS (default 2, best of), VIT_BATCH.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATASETS_PY="${DATASETS_PY:-/work/.venvs/dsfix/bin/python}"
HF_ROWS="${HF_ROWS:-5000 50000}"
HF_REPEATS="${HF_REPEATS:-2}"
VB="$(BENCH_PY="$DATASETS_PY" find_vit_batch)"
[[ -x "$VB" ]] || die "no vit-batch binary at $VB"
[[ -x "$DATASETS_PY" ]] || die "no python at $DATASETS_PY (see this script's header)"
"$DATASETS_PY" -c "import datasets, PIL, pyarrow" || die "$DATASETS_PY lacks datasets/pillow/pyarrow"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS"
MODEL="$REPO/fixtures/models/vit-digits"
W="$BENCH_WORK/hf-memory"
mkdir -p "$W/logs"

for n in $HF_ROWS; do
  if [[ ! -f "$W/data-$n/datasets.parquet" ]]; then
    mkdir -p "$W/data-$n"
    "$DATASETS_PY" - "$REPO/fixtures/digits/test" "$n" "$W/data-$n" <<'EOF'
import os, sys
import datasets, pyarrow.parquet as pq
root, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rels = sorted(f"{c}/{f}" for c in sorted(os.listdir(root)) for f in os.listdir(os.path.join(root, c)))
blobs = {r: open(os.path.join(root, r), "rb").read() for r in rels}
names = [str(i) for i in range(10)]
rows = [rels[i % len(rels)] for i in range(n)]
features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                              "site": datasets.Value("string")})
ds = datasets.Dataset.from_dict(
    {"image": [{"bytes": blobs[r], "path": f"{i:06d}-{r.replace('/', '_')}"} for i, r in enumerate(rows)],
     "label": [names.index(r.split("/")[0]) for r in rows],
     "site": ["ABC"[i % 3] for i in range(n)]}, features=features)
ds.to_parquet(os.path.join(out, "datasets.parquet"))
t = pq.read_table(os.path.join(out, "datasets.parquet"))
pq.write_table(t, os.path.join(out, "rg500.parquet"), row_group_size=500)
for f in ("datasets", "rg500"):
    m = pq.ParquetFile(os.path.join(out, f + ".parquet")).metadata
    print(f"{f}: {m.num_rows} rows, {m.num_row_groups} row groups", file=sys.stderr)
EOF
  fi
done

peak() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{printf "%.1f", $1/1024}'; }
wall() { sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$1"; }

# best_of CMD... -> sets BEST_MB, BEST_WALL (lowest peak RSS of HF_REPEATS runs)
best_of() {
  local log="$1"; shift
  BEST_MB=""; BEST_WALL=""
  for r in $(seq 1 "$HF_REPEATS"); do
    /usr/bin/time -v -o "$log.time.$r" "$@" >"$log.out.$r" 2>&1 || { cat "$log.out.$r" >&2; die "failed: $*"; }
    local mb; mb="$(peak "$log.time.$r")"
    if [[ -z "$BEST_MB" ]] || awk "BEGIN{exit !($mb < $BEST_MB)}"; then BEST_MB="$mb"; BEST_WALL="$(wall "$log.time.$r")"; fi
  done
}

PEER='
import sys, datasets
ds = datasets.load_dataset("parquet", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
n = 0
for row in ds:
    row["image"].convert("RGB"); n += 1
print(n)
'

declare -A MB
out="$W/hf_memory.md"
{
  echo "hf_memory: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); flags: $(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo
  echo "| rows | file layout | row groups | vit-batch peak MB | vit-batch wall | datasets+Pillow peak MB | datasets wall |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
} | tee "$out"
for n in $HF_ROWS; do
  for f in datasets rg500; do
    file="$W/data-$n/$f.parquet"
    groups="$("$DATASETS_PY" -c "import pyarrow.parquet as pq,sys;print(pq.ParquetFile(sys.argv[1]).metadata.num_row_groups)" "$file")"
    rm -rf "$W/run-$n-$f"
    best_of "$W/logs/vb-$n-$f" "$VB" score "$file" --model "$MODEL" --out "$W/run-$n-$f" --overwrite --no-report --quiet --threads 2
    vb_mb="$BEST_MB"; vb_wall="$BEST_WALL"
    rm -rf "$W/cache-$n-$f"
    best_of "$W/logs/peer-$n-$f" "$DATASETS_PY" -c "$PEER" "$file" "$W/cache-$n-$f"
    MB[$n-$f]="$vb_mb"
    echo "| $n | $f | $groups | $vb_mb | $vb_wall | $BEST_MB | $BEST_WALL |" | tee -a "$out"
  done
done
set -- $HF_ROWS
if [[ $# -ge 2 ]]; then
  small="$1"; large="${!#}"
  {
    echo
    for f in datasets rg500; do
      ratio="$(awk "BEGIN{printf \"%.2f\", ${MB[$large-$f]} / ${MB[$small-$f]}}")"
      verdict="$(awk "BEGIN{print ($ratio <= 1.2) ? \"ok\" : \"OVER\"}")"
      echo "- $f layout: vit-batch peak RSS $large / $small rows = ${ratio}x (target <= 1.2x): $verdict"
    done
  } | tee -a "$out"
fi
echo "bench: table in $out, logs in $W/logs" >&2
