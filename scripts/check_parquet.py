"""Read a vit-batch predictions.parquet with every reader a user may have and print
what each saw, as one JSON object (tests/integration/parquet_readers.rs compares it
with the rows vit-batch itself wrote).

Usage: check_parquet.py FILE [pyarrow|pandas|polars|duckdb ...]
"""
import json
import sys


def summary(columns):
    """The same digest for every reader: row count, paths, nulls, top-k lengths."""
    paths = list(columns["path"])
    topk = list(columns["topk_ids"])
    scores = list(columns["score"])
    return {
        "rows": len(paths),
        "paths": paths,
        "null_scores": sum(1 for s in scores if s is None or s != s),
        "topk_lens": [None if t is None else len(t) for t in topk],
        "label_id_sum": sum(int(v) for v in columns["label_id"] if v is not None and v == v),
    }


def with_pyarrow(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    types = {f.name: str(f.type) for f in t.schema}
    cols = {c: t.column(c).to_pylist() for c in ["path", "topk_ids", "score", "label_id"]}
    return dict(summary(cols), version=pa.__version__, types=types)


def with_pandas(path):
    import pandas as pd

    df = pd.read_parquet(path)
    cols = {
        "path": df["path"].tolist(),
        "topk_ids": [None if v is None else list(v) for v in df["topk_ids"]],
        "score": [None if v != v else float(v) for v in df["score"]],
        "label_id": [None if v != v else v for v in df["label_id"]],
    }
    return dict(summary(cols), version=pd.__version__)


def with_polars(path):
    import polars as pl

    df = pl.read_parquet(path)
    cols = {c: df[c].to_list() for c in ["path", "topk_ids", "score", "label_id"]}
    return dict(summary(cols), version=pl.__version__,
                types={k: str(v) for k, v in df.schema.items()})


def with_duckdb(path):
    import duckdb

    con = duckdb.connect()
    # A single-file scan keeps the file's row order (preserve_insertion_order).
    q = f"SELECT path, topk_ids, score, label_id FROM read_parquet('{path}')"
    rows = con.sql(q).fetchall()
    cols = {name: [r[i] for r in rows] for i, name in enumerate(["path", "topk_ids", "score", "label_id"])}
    types = {r[0]: r[1] for r in con.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
    return dict(summary(cols), version=duckdb.__version__, types=types)


READERS = {"pyarrow": with_pyarrow, "pandas": with_pandas, "polars": with_polars, "duckdb": with_duckdb}

if __name__ == "__main__":
    path, names = sys.argv[1], sys.argv[2:]
    out = {}
    for n in names:
        try:
            out[n] = READERS[n](path)
        except Exception as e:  # reported, so the test shows which reader failed and why
            out[n] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
