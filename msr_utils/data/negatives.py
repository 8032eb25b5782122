"""Uniform negative sampling: items the user never interacted with, seeded, no duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from msr_utils.data.schema import ITEM, USER


def sample_negatives(users: np.ndarray, n_neg: int, interactions: pd.DataFrame,
                     items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An array (len(users), n_neg) of item ids; row r holds distinct items unseen by users[r].

    Vectorised rejection sampling: draw for every row at once, redraw only the bad cells.
    """
    items = np.sort(np.asarray(items, dtype=object))
    n_items = len(items)
    item_code = pd.Index(items).get_indexer(interactions[ITEM].to_numpy())
    user_index = pd.Index(pd.unique(interactions[USER]))
    seen = np.unique(user_index.get_indexer(interactions[USER].to_numpy()).astype(np.int64) * n_items
                     + item_code)
    row_user = user_index.get_indexer(np.asarray(users, dtype=object)).astype(np.int64)
    if (row_user < 0).any():
        raise ValueError(f"user {users[np.flatnonzero(row_user < 0)[0]]!r} has no interactions")
    seen_count = np.bincount(seen // n_items, minlength=len(user_index))[row_user]
    if (n_items - seen_count < n_neg).any():
        r = int(np.flatnonzero(n_items - seen_count < n_neg)[0])
        raise ValueError(f"user {users[r]!r} has fewer than {n_neg} unseen items to sample from")

    codes = rng.integers(0, n_items, size=(len(row_user), n_neg))
    while True:
        bad = np.isin(row_user[:, None] * n_items + codes, seen)
        order = np.argsort(codes, axis=1, kind="stable")  # a repeat in a row: redraw later copies
        ordered = np.take_along_axis(codes, order, axis=1)
        repeat = np.zeros_like(bad)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        np.put_along_axis(bad, order, np.take_along_axis(bad, order, axis=1) | repeat, axis=1)
        if not bad.any():
            return items[codes]
        codes[bad] = rng.integers(0, n_items, size=int(bad.sum()))
