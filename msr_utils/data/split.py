"""Split protocols. Every row: user_id, target, target_pos, history (items strictly before the
target, oldest first), candidates (target first, then negatives).

- `paper`: as the official code: per user the N globally most popular of their items, put back
  in time order; last = target, rest = history; users split train/valid/test by a seeded shuffle.
- `loo`: chronological leave-one-out: last = test, second-last = valid, every earlier position
  with a non-empty history = a train row; history truncated to the last `max_history` items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msr_utils.data.negatives import sample_negatives
from msr_utils.data.schema import CANDIDATES, HISTORY, ITEM, SPLITS, TARGET, TARGET_POS, TIME, USER


def _rows(seqs: pd.DataFrame, targets: pd.Series, max_history: int | None) -> pd.DataFrame:
    """Rows for the target positions `targets` (a mask over `seqs`, a numbered table)."""
    seq_items = seqs.groupby(USER, sort=False)[ITEM].agg(list)
    rows = seqs[targets & (seqs["_pos"] >= 1)]
    pos = rows["_pos"].to_numpy()
    start = np.zeros_like(pos) if max_history is None else np.maximum(pos - max_history, 0)
    history = [seq_items[u][s:p] for u, s, p in zip(rows[USER], start, pos)]
    return pd.DataFrame({USER: rows[USER].to_numpy(), TARGET: rows[ITEM].to_numpy(),
                         TARGET_POS: pos.astype("int64"), HISTORY: history,
                         "_offset": (rows["_len"] - 1 - rows["_pos"]).to_numpy()})


def _numbered(df: pd.DataFrame) -> pd.DataFrame:
    """Add `_pos` (0-based position in the user's time-ordered sequence) and `_len`."""
    df = df.sort_values([USER, TIME], kind="stable").reset_index(drop=True)
    g = df.groupby(USER, sort=False)
    return df.assign(_pos=g.cumcount(), _len=g[ITEM].transform("size"))


def loo_rows(df: pd.DataFrame, max_history: int) -> dict[str, pd.DataFrame]:
    seqs = _numbered(df)
    rows = _rows(seqs, pd.Series(True, index=seqs.index), max_history)
    split = np.select([rows["_offset"] == 0, rows["_offset"] == 1], ["test", "valid"], "train")
    rows = rows.drop(columns="_offset")
    return {name: rows[split == name].reset_index(drop=True) for name in SPLITS}


def paper_rows(df: pd.DataFrame, n_items: int, ratios, seed: int) -> dict[str, pd.DataFrame]:
    seqs = _numbered(df)
    seqs["_pop"] = seqs.groupby(ITEM)[USER].transform("size")
    top = (seqs.sort_values([USER, "_pop", "_pos"], ascending=[True, False, True], kind="stable")
               .groupby(USER, sort=False).head(n_items))
    top = _numbered(top.drop(columns=["_pos", "_len", "_pop"]))
    rows = _rows(top, top["_pos"] == top["_len"] - 1, None).drop(columns="_offset")

    users = np.sort(rows[USER].unique())
    shuffled = np.random.default_rng(seed).permutation(users)
    cut = np.round(np.cumsum(ratios)[:2] * len(users)).astype(int)
    groups = dict(zip(SPLITS, np.split(shuffled, cut)))
    return {name: rows[rows[USER].isin(groups[name])].reset_index(drop=True) for name in SPLITS}


def add_candidates(rows: dict[str, pd.DataFrame], df: pd.DataFrame, n_neg: dict[str, int],
                   seed: int) -> dict[str, pd.DataFrame]:
    """Attach `candidates` = [target] + n_neg[split] negatives unseen by the user (whole sequence)."""
    items = np.sort(df[ITEM].unique())
    out = {}
    for i, (name, part) in enumerate(rows.items()):
        rng = np.random.default_rng([seed, i])
        negs = sample_negatives(part[USER].to_numpy(), n_neg[name], df, items, rng)
        cands = np.concatenate([part[TARGET].to_numpy(dtype=object)[:, None], negs], axis=1)
        out[name] = part.assign(**{CANDIDATES: list(map(list, cands))})
    return out
