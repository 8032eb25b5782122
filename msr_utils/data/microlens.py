"""MicroLens loaders (the 50k variant the paper's code uses; 100k has the same layout).

Files: `MicroLens-50k_pairs.tsv` (user<TAB>items in time order, space separated, CRLF),
`MicroLens-50k_pairs.csv` (user,item,timestamp; preferred when present),
`MicroLens-50k_titles.csv` (item,title) and covers `MicroLens-50k_covers/<item>.jpg`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from msr_utils.data.download import cover_urls
from msr_utils.data.schema import (DESCRIPTION, IMAGE_PATH, IMAGE_URL, ITEM, TITLE, DataError,
                                   interactions_frame)

def _find(folder: Path, suffix: str) -> Path | None:
    hits = sorted(folder.glob(f"MicroLens-*{suffix}"))
    return hits[0] if hits else None


def load_pairs_tsv(path: Path) -> pd.DataFrame:
    """User sequences; the file has no timestamps, so `timestamp` is the position in the sequence."""
    raw = pd.read_csv(path, sep="\t", header=None, names=["user", "items"], dtype=str,
                      keep_default_na=False, quoting=3, engine="c")
    bad = raw["items"].str.strip().eq("") | raw["user"].str.strip().eq("")
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"{path}: line {line}: expected 'user<TAB>item item ...', got {raw.iloc[line - 1].tolist()}")
    seqs = raw["items"].str.strip().str.split()
    lengths = seqs.str.len().to_numpy()
    users = np.repeat(raw["user"].str.strip().to_numpy(), lengths)
    positions = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else []
    return interactions_frame(users, seqs.explode().to_numpy(), positions)


def load_pairs_csv(path: Path) -> pd.DataFrame:
    """user,item,timestamp rows (timestamps in ms or s; stored as seconds)."""
    df = pd.read_csv(path, dtype=str)
    cols = {c.lower(): c for c in df.columns}
    names = [next((cols[a] for a in alts if a in cols), None)
             for alts in (("user", "userid"), ("item", "videoid"), ("timestamp",))]
    if None in names:
        raise DataError(f"{path}: need columns user/userID, item/videoID, timestamp; found {list(df.columns)}")
    ts = pd.to_numeric(df[names[2]], errors="coerce")
    if ts.isna().any():
        line = int(np.flatnonzero(ts.isna().to_numpy())[0]) + 2  # + header
        raise DataError(f"{path}: line {line}: field 'timestamp' is not a number")
    ts = ts.astype("int64")
    if len(ts) and ts.max() > 10**11:  # milliseconds
        ts = ts // 1000
    return interactions_frame(df[names[0]], df[names[1]], ts)


def load_titles(path: Path, covers_dir: Path | None, root: Path) -> pd.DataFrame:
    """Items table; `image_path` is set (relative to `root`) only where a cover file exists."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns[:2]) != ["item", "title"]:
        raise DataError(f"{path}: expected header 'item,title', found {list(df.columns)}")
    items = pd.DataFrame({ITEM: df["item"].str.strip(), TITLE: df["title"]})
    items[DESCRIPTION] = None
    paths = [covers_dir / f"{i}.jpg" if covers_dir else None for i in items[ITEM]]
    items[IMAGE_PATH] = [str(p.resolve().relative_to(root)) if p and p.is_file() else None for p in paths]
    items[IMAGE_URL] = items[ITEM].map(cover_urls(items[ITEM]))
    return items


def load(folder: Path, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(interactions, items, timestamp_unit) from a MicroLens folder; unit is 's' or 'order'."""
    titles = _find(folder, "_titles.csv") or _find(folder, "_title_en.csv")
    csv, tsv = _find(folder, "_pairs.csv"), _find(folder, "_pairs.tsv")
    if titles is None or (csv is None and tsv is None):
        raise DataError(f"{folder}: need MicroLens-*_pairs.tsv or _pairs.csv and MicroLens-*_titles.csv; "
                        f"found {sorted(p.name for p in folder.glob('*'))}")
    interactions = load_pairs_csv(csv) if csv else load_pairs_tsv(tsv)
    covers = _find(folder, "_covers")
    items = load_titles(titles, covers, root.resolve())
    return interactions, items, ("s" if csv else "order")
