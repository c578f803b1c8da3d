"""Synthetic shard outputs for benches/merge_bench.sh, made from a real run.

  make_merge_shards.py TEMPLATE_RUN OUT_DIR SHARDS ROWS_PER_SHARD

TEMPLATE_RUN is an ordinary `vit-batch score` run folder (the bench scores the digits
fixture with the bundled model). For a dataset of SHARDS * ROWS_PER_SHARD images, each
OUT_DIR/shard-K is what `vit-batch score --shard K/SHARDS` writes: predictions.parquet
with the template's schema (written by Polars in vit-batch; here pyarrow, same Arrow
schema, row groups of 1,024 rows like the parts `score` commits), run.json with the
shard, its row count and the dataset size, and the template's metrics.json. Global row
i is a template row of the same class with the path `<class>/img_<i>.png`, classes in
contiguous blocks, so the paths are sorted as a real walk sorts them and shard K holds
rows K, K+N, K+2N, ... Needs pyarrow (the project's .venv has it).
"""

import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    template, out, shards, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    total = shards * per
    table = pq.read_table(os.path.join(template, "predictions.parquet"))
    with open(os.path.join(template, "run.json")) as f:
        identity = json.load(f)
    labels = table.column("label").to_pylist()
    classes = sorted(set(labels))
    by_class = {c: [i for i, l in enumerate(labels) if l == c] for c in classes}
    block = -(-total // len(classes))
    os.makedirs(out, exist_ok=True)
    for k in range(shards):
        rows = range(k, total, shards)
        take, paths = [], []
        for i in rows:
            c = classes[i // block]
            members = by_class[c]
            take.append(members[i % len(members)])
            paths.append(f"{c}/img_{i:09d}.png")
        t = table.take(pa.array(take, pa.int64()))
        t = t.set_column(t.schema.get_field_index("path"), t.schema.field("path"),
                         pa.array(paths, t.schema.field("path").type))
        d = os.path.join(out, f"shard-{k}")
        os.makedirs(d, exist_ok=True)
        pq.write_table(t, os.path.join(d, "predictions.parquet"), row_group_size=1024)
        ident = dict(identity, shard={"index": k, "count": shards}, rows=len(rows),
                     dataset_images=total)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump(ident, f, indent=2)
        shutil.copy(os.path.join(template, "metrics.json"), os.path.join(d, "metrics.json"))


if __name__ == "__main__":
    main()
