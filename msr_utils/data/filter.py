"""Cleaning before the split: chronological order, repeat removal, iterative k-core."""

from __future__ import annotations

import pandas as pd

from msr_utils.data.schema import ITEM, TIME, USER


def order_and_dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Sort each user's interactions by time (file order breaks ties) and keep the first
    interaction with each item. Returns the table and how many repeats were dropped."""
    df = df.sort_values([USER, TIME], kind="stable").reset_index(drop=True)
    keep = ~df.duplicated([USER, ITEM], keep="first")
    return df[keep].reset_index(drop=True), int((~keep).sum())


def kcore(df: pd.DataFrame, min_user: int, min_item: int) -> tuple[pd.DataFrame, int]:
    """Drop users with < min_user and items with < min_item interactions until both hold.
    Returns the fixed point and the number of passes it took."""
    passes = 0
    while True:
        passes += 1
        user_n = df.groupby(USER)[ITEM].transform("size")
        item_n = df.groupby(ITEM)[USER].transform("size")
        keep = (user_n >= min_user) & (item_n >= min_item)
        if keep.all():
            return df.reset_index(drop=True), passes
        df = df[keep]


def first_users(df: pd.DataFrame, n: int, order: pd.Series) -> pd.DataFrame:
    """The interactions of the first `n` users in `order` (file order); n == 0 keeps all."""
    if n == 0:
        return df
    kept = pd.Index(order[order.isin(df[USER].unique())].head(n))
    return df[df[USER].isin(kept)].reset_index(drop=True)
