"""What every baseline shares with our method's evaluation: the item vocabulary, training
sequences rebuilt from the train rows, and scoring rows -> long table -> `metrics.evaluate`.

A baseline scores the `candidates` of each row (target first, then negatives); the scores become
a long table (user_id, target_pos, row_key, item_id, label, score) grouped per row, so under the
`loo` protocol a user with several rows counts once per row, exactly as stage 05 counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from msr_utils import metrics
from msr_utils.data.schema import CANDIDATES, HISTORY, ITEM, TARGET, TARGET_POS, USER, DataError, check_columns

GROUP = "row_key"  # one evaluation group per row: user_id @ target_pos
ROW_COLUMNS = [USER, TARGET, TARGET_POS, HISTORY, CANDIDATES]


class Vocab:
    """Item ids <-> indices 1..N (0 is padding), in the order of items.parquet."""

    def __init__(self, item_ids: Iterable[str]):
        self.ids = list(dict.fromkeys(str(i) for i in item_ids))
        self.index = {item: i + 1 for i, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, items: Sequence[str], source: str = "rows") -> np.ndarray:
        try:
            return np.fromiter((self.index[str(i)] for i in items), dtype=np.int64, count=len(items))
        except KeyError as err:
            raise DataError(f"{source}: item {err.args[0]!r} is not in items.parquet") from None


def row_keys(rows: pd.DataFrame) -> pd.Series:
    return rows[USER].astype(str) + "@" + rows[TARGET_POS].astype(str)


def user_sequences(rows: pd.DataFrame) -> list[list[str]]:
    """Each user's training sequence, oldest first, rebuilt from their rows' (history, target).

    `target_pos` is the target's position in the user's sequence and the history fills the
    positions just before it, so the union over a user's rows is their sequence up to the last
    training target: one row per user under `paper`, every prefix under `loo` (counted once)."""
    check_columns(rows, [USER, TARGET, TARGET_POS, HISTORY], "training rows")
    by_user: dict[str, dict[int, str]] = {}
    for user, target, pos, history in rows[[USER, TARGET, TARGET_POS, HISTORY]].itertuples(index=False):
        seq = by_user.setdefault(str(user), {})
        start = int(pos) - len(history)
        seq.update({start + j: str(item) for j, item in enumerate(history)})
        seq[int(pos)] = str(target)
    return [[seq[p] for p in sorted(seq)] for seq in by_user.values()]


def long_table(rows: pd.DataFrame, scores: Sequence[np.ndarray]) -> pd.DataFrame:
    """One line per (row, candidate): the row's first candidate is the positive."""
    check_columns(rows, ROW_COLUMNS, "evaluation rows")
    if len(scores) != len(rows):
        raise ValueError(f"{len(scores)} score lists for {len(rows)} rows")
    sizes = rows[CANDIDATES].map(len).to_numpy()
    for i, (s, n) in enumerate(zip(scores, sizes)):
        if len(s) != n:
            raise ValueError(f"row {i}: {len(s)} scores for {n} candidates")
    heads = [str(c[0]) if len(c) else None for c in rows[CANDIDATES]]
    if (bad := int((np.asarray(heads, dtype=object) != rows[TARGET].astype(str).to_numpy()).sum())):
        raise DataError(f"{bad} row(s) do not list their target as the first candidate")
    first = np.zeros(int(sizes.sum()), dtype=np.int64)
    first[np.cumsum(sizes) - sizes] = 1
    return pd.DataFrame({
        USER: np.repeat(rows[USER].to_numpy(), sizes),
        TARGET_POS: np.repeat(rows[TARGET_POS].to_numpy(), sizes),
        GROUP: np.repeat(row_keys(rows).to_numpy(), sizes),
        ITEM: np.concatenate([np.asarray(c, dtype=object) for c in rows[CANDIDATES]]),
        metrics.LABEL: first,
        metrics.SCORE: np.concatenate([np.asarray(s, dtype=float) for s in scores]),
    })


EXPECTED = "_expected"  # key suffix: HR/NDCG/MRR@K expected under a random order of the tied candidates


def evaluate_rows(rows: pd.DataFrame, scores: Sequence[np.ndarray], ks: Iterable[int],
                  both_ties: bool = False) -> dict[str, float]:
    """`metrics.evaluate` on the rows' candidate scores, one group per row. With `both_ties`, also
    `<metric>@K_expected` (random tie order; AUC/GAUC are the same under both) and `tied_share`."""
    return evaluate_table(long_table(rows, scores), ks, both_ties)


def evaluate_table(table: pd.DataFrame, ks: Iterable[int], both_ties: bool = False) -> dict[str, float]:
    """evaluate_rows on a long_table."""
    out = metrics.evaluate(table, ks=ks, group_col=GROUP)
    if both_ties:
        expected = metrics.evaluate(table, ks=ks, group_col=GROUP, ties="expected")
        out |= {k + EXPECTED: v for k, v in expected.items() if "@" in k}
        out["tied_share"] = metrics.tied_share(table, GROUP)
    return out
