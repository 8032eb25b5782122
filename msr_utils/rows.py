"""The split rows the LLM stages work on, and the items those rows read.

By default stage 03 summarises every row of every split and stage 02 every item. On a CPU with a real
model generation is most of the cost, and SFT trains on its first `sft.limit` train rows only, so
two switches spend the time where a stage reads the result (the small profile sets both):

- `user_summary.rows: used`: stage 03 summarises the train rows SFT trains on (the first sft.limit)
  and every valid and test row (test: the first eval.limit, as stage 05 scores);
- `item_summary.items: used`: stage 02 summarises only the items of those rows: their histories
  (the prefix before the target) and their candidates.

A train row past the cap gets no preference; stage 06's baselines still train on every train row
(an item without a summary enters gru4rec_summary as its title, counted).
"""

from __future__ import annotations

import pandas as pd

from msr_utils.config import Params
from msr_utils.data.schema import CANDIDATES, SPLITS, TARGET_POS, USER

SPLIT, PREFIX = "split", "prefix"  # the columns of users.prefixes that say which split row it is


def first(rows: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The first `limit` rows (0 = all): how sft.limit cuts train and eval.limit cuts test."""
    return rows.head(limit) if limit else rows


def used(params: Params, splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each split's rows that the LLM stages read under user_summary.rows (all: every row)."""
    if params.user_summary.rows == "all":
        return dict(splits)
    caps = {"train": params.sft.limit, "valid": 0, "test": params.eval.limit}
    return {s: first(splits[s], caps[s]) for s in SPLITS}


def keep_used(params: Params, prefixes: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows of a users.prefixes table that belong to `used` split rows."""
    wanted = pd.concat([part[[USER, TARGET_POS]].assign(**{SPLIT: s}) for s, part in used(params, splits).items()])
    keys = pd.MultiIndex.from_frame(prefixes[[SPLIT, USER, TARGET_POS]])
    return prefixes[keys.isin(pd.MultiIndex.from_frame(wanted[[SPLIT, USER, TARGET_POS]]))].reset_index(drop=True)


def used_items(params: Params, prefixes: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> set[str]:
    """The items the used rows read: every item of their prefixes and their candidates."""
    rows = keep_used(params, prefixes, splits)
    histories = {str(i) for p in rows[PREFIX] for i in p}
    candidates = {str(i) for part in used(params, splits).values() for c in part[CANDIDATES] for i in c}
    return histories | candidates
