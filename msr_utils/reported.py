"""The paper's reported numbers, kept beside ours in the result tables.

`data/paper_reported.csv` holds one row per number the paper gives, in long form:

    dataset,variant,paper_row,metric,value,where

- `dataset`: one of msr_utils.data.registry.DATASETS;
- `variant`: the row of our tables it matches (`fine_tuned` is MLLM-MSR itself, `zero_shot`, a
  baseline name such as `gru4rec` or an ablation variant such as `no_recurrence`);
- `paper_row`: the method's name in the paper; `metric`: auc, gauc, hr@K, ndcg@K or mrr@K;
- `value`: x 100 as printed in the paper; `where`: the table or page the number comes from.

`side_by_side` puts `paper_<metric>` right after our `<metric>` column, on the row of the same
variant; a reported variant we have no row for gets a row of its own (source "reported (paper)").
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from msr_utils.data.registry import DATASETS

FILE = Path("data/paper_reported.csv")
COLUMNS = ["dataset", "variant", "paper_row", "metric", "value", "where"]
SOURCE = "reported (paper)"
PAPER_ROW, PREFIX = "paper_row", "paper_"
NOTE = ("`paper_*` columns: the paper's reported numbers (Ye et al., AAAI-25) for the same variant, from "
        f"`{FILE}`; `paper_row` names the method as the paper does. Its splits and models are not ours.")
METRIC = re.compile(r"(auc|gauc|(hr|ndcg|mrr)@[1-9]\d*)")


def load(path: Path) -> pd.DataFrame:
    """The validated reported numbers; a ValueError names the file, line and field of a bad entry."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's reported numbers (columns {', '.join(COLUMNS)})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    for i, row in table.iterrows():
        at = f"{path}, line {i + 2}"
        empty = [c for c in COLUMNS if not row[c].strip()]
        if empty:
            raise ValueError(f"{at}: empty {', '.join(empty)}")
        if row["dataset"] not in DATASETS:
            raise ValueError(f"{at}: dataset {row['dataset']!r} is not one of {', '.join(DATASETS)}")
        if not METRIC.fullmatch(row["metric"]):
            raise ValueError(f"{at}: metric {row['metric']!r} is not auc, gauc, hr@K, ndcg@K or mrr@K")
        value = pd.to_numeric(row["value"], errors="coerce")
        if not 0 <= value <= 100:  # NaN fails too
            raise ValueError(f"{at}: value {row['value']!r} is not a number from 0 to 100 (metrics x 100)")
    key = ["dataset", "variant", "metric"]
    twice = table[table.duplicated(key, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        same = twice[(twice[key] == first[key]).all(axis=1)]
        raise ValueError(f"{path}: {' / '.join(first[key])} is given {len(same)} times "
                         f"(lines {', '.join(str(i + 2) for i in same.index)})")
    return table.astype({"value": float})


def side_by_side(table: pd.DataFrame, dataset: str, path: Path) -> pd.DataFrame:
    """`table` (one row per variant, metrics x 100) with the paper's numbers for `dataset` beside ours."""
    reported = load(path)
    mine = reported[reported["dataset"] == dataset]
    metrics = list(dict.fromkeys(reported["metric"]))  # the same columns for every dataset
    out = table.drop(columns=[c for c in table.columns if c.startswith(PREFIX)])
    wide = (mine.pivot(index="variant", columns="metric", values="value")
            .reindex(columns=metrics).add_prefix(PREFIX))
    wide.insert(0, PAPER_ROW, mine.groupby("variant")["paper_row"].first())
    wide = wide.reset_index()
    extra = wide[~wide["variant"].isin(out["variant"])]
    if len(extra):
        out = pd.concat([out, pd.DataFrame({"dataset": dataset, "variant": extra["variant"], "source": SOURCE,
                                            "profile": "paper", "model": extra[PAPER_ROW]})],
                        ignore_index=True)
    out = out.merge(wide, on="variant", how="left")
    return out[ordered(list(out.columns), metrics)]


def ordered(columns: list[str], metrics: list[str]) -> list[str]:
    """paper_row after variant, each paper_<metric> after <metric> (at the end where we have none)."""
    ours = [c for c in columns if not c.startswith(PREFIX)]
    out = []
    for c in ours:
        out.append(c)
        if c == "variant":
            out.append(PAPER_ROW)
        if c in metrics:
            out.append(PREFIX + c)
    return out + [PREFIX + m for m in metrics if m not in ours]
