#!/usr/bin/env python3
"""Row-by-row agreement of vit-batch's predictions.parquet with the peer's CSV.

    compare_preds.py RUN_DIR/predictions.parquet peer.csv
Prints `compare: N rows, top-1 agree X%, max |score diff| D` (needs pyarrow; prints
`compare: skipped (no pyarrow)` otherwise). Same model + same preprocessing should
agree on (nearly) every row; decoders differ by a few JPEG levels, so a near-tie can flip.
"""
import csv
import sys

try:
    import pyarrow.parquet as pq
except ImportError:
    print("compare: skipped (no pyarrow)")
    sys.exit(0)

t = pq.read_table(sys.argv[1], columns=["path", "pred", "score"]).to_pydict()
vb = {p: (l, s) for p, l, s in zip(t["path"], t["pred"], t["score"])}
agree = n = 0
maxd = 0.0
missing = 0
with open(sys.argv[2], newline="") as fh:
    for r in csv.DictReader(fh):
        v = vb.get(r["path"])
        if v is None:
            missing += 1
            continue
        n += 1
        agree += v[0] == r["pred"]
        if v[1] is not None:
            maxd = max(maxd, abs(float(v[1]) - float(r["score"])))
extra = len(vb) - n
print(f"compare: {n} rows, top-1 agree {100 * agree / max(n, 1):.2f}%, max |score diff| {maxd:.2e}"
      + (f"; {missing} peer rows not in vit-batch, {extra} vit-batch rows not in peer" if missing or extra else ""))
