"""Append-only parquet shard cache for generated text (item summaries now, user summaries later).

A record is keyed by (key, model, prompt_hash) and carries any extra columns (summary, ...).
Each `append` writes one parquet shard atomically (temp file in the same folder, fsync,
os.replace), so a process killed at any moment leaves only whole shards behind. Shards are named
by write time, so `read` keeps the first record written for a key. A changed model or prompt hash
simply misses its own keys; records of other hashes stay reusable.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KEY, MODEL, PROMPT_HASH = "key", "model", "prompt_hash"
ID_COLUMNS = [KEY, MODEL, PROMPT_HASH]
SHARD_GLOB = "part-*.parquet"


class ShardCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def shards(self) -> list[Path]:
        """Finished shards in write order (temp files start with '.' and are never listed)."""
        return sorted(self.root.glob(SHARD_GLOB))

    def append(self, records: pd.DataFrame | Iterable[dict]) -> Path | None:
        """Write records as one new shard; returns its path (None when there is nothing to write)."""
        df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
        if df.empty:
            return None
        missing = [c for c in ID_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"cache {self.root}: records lack column(s) {missing}")
        df = df.astype({c: "str" for c in ID_COLUMNS})
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.root / f".{name}.tmp"
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        return self.root / name

    def read(self, model: str | None = None, prompt_hash: str | None = None) -> pd.DataFrame:
        """All records (optionally of one model / prompt hash), first write per id wins,
        sorted by (model, prompt_hash, key)."""
        return _combine(self.shards(), model, prompt_hash)

    def done_keys(self, model: str, prompt_hash: str) -> set[str]:
        """Keys already cached for this model and prompt hash."""
        df = _combine(self.shards(), model, prompt_hash, columns=ID_COLUMNS)
        return set(df[KEY])


def merge(shard_dirs: Iterable[str | Path], out: str | Path) -> ShardCache:
    """Combine the caches of several machines (shard_dirs, in order) into one shard under `out`."""
    paths = [p for d in shard_dirs for p in ShardCache(d).shards()]
    cache = ShardCache(out)
    cache.append(_combine(paths))
    return cache


def _combine(paths: list[Path], model: str | None = None, prompt_hash: str | None = None,
             columns: list[str] | None = None) -> pd.DataFrame:
    if not paths:
        return pd.DataFrame({c: pd.Series(dtype="str") for c in columns or ID_COLUMNS})
    tables = [pq.read_table(p, columns=columns) for p in paths]
    df = pa.concat_tables(tables, promote_options="default").to_pandas()
    if model is not None:
        df = df[df[MODEL] == model]
    if prompt_hash is not None:
        df = df[df[PROMPT_HASH] == prompt_hash]
    df = df.drop_duplicates(ID_COLUMNS, keep="first")
    return df.sort_values([MODEL, PROMPT_HASH, KEY], kind="stable").reset_index(drop=True)
