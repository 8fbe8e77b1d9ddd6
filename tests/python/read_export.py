"""Reads a `sluice replay export` parquet file with whichever of duckdb, pandas and polars are
importable and prints one JSON line per reader: rows, groups, total completion tokens, reward sum.

Usage: python3 read_export.py FILE.parquet
"""
import json
import sys

path = sys.argv[1]
readers = []

try:
    import duckdb

    con = duckdb.connect()
    rows, groups, tokens, reward = con.execute(
        "SELECT count(*), count(DISTINCT group_id), sum(len(completion_tokens)), sum(reward) "
        f"FROM read_parquet('{path}')"
    ).fetchone()
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
    readers.append({"reader": "duckdb", "rows": rows, "groups": groups, "tokens": int(tokens),
                    "reward": float(reward), "columns": cols})
except ImportError:
    pass

try:
    import pandas as pd

    df = pd.read_parquet(path)
    readers.append({"reader": "pandas", "rows": len(df), "groups": int(df.group_id.nunique()),
                    "tokens": int(df.completion_tokens.map(len).sum()), "reward": float(df.reward.sum()),
                    "columns": list(df.columns)})
except ImportError:
    pass

try:
    import polars as pl

    df = pl.read_parquet(path)
    readers.append({"reader": "polars", "rows": df.height, "groups": df["group_id"].n_unique(),
                    "tokens": int(df["completion_tokens"].list.len().sum()),
                    "reward": float(df["reward"].sum()), "columns": df.columns})
except ImportError:
    pass

for r in readers:
    print(json.dumps(r))
if not readers:
    sys.exit("none of duckdb, pandas, polars is importable")
