"""The paper's reported numbers, kept beside ours in the result tables.

`data/paper_reported.csv` holds one row per number the paper gives (every number of
shared/PAPER_NUMBERS.md), in long form:

    dataset,variant,paper_row,metric,value,kind,where

- `dataset`: one of msr_utils.data.registry.DATASETS;
- `variant`: the row of our tables it matches (OURS: `fine_tuned` is MLLM-MSR itself, `zero_shot`
  LLaVA, `tallrec`, the ablations `no_recurrence` / `no_image_summary`, the GRU4Rec feature study
  `gru4rec_summary` / `gru4rec_image`, ...), or one that matches no row of ours: `block_point_<n>`
  (Figure 5's n-th block size, whose value the figure does not show) and `dataset` (the statistics);
- `paper_row`: the method's name in the paper; `metric`: auc, gauc, hr@K, ndcg@K or mrr@K (x 100,
  0..100), or for `dataset` one of STATS (a count or a mean, >= 0);
- `kind`: `table` (transcribed from the paper's tables by a third party) or `figure` (read off a
  figure: approximate, shown as "≈ 80.8"); `where`: the source, precisely.

(dataset, variant, metric, kind) is unique. `side_by_side` puts `paper_<metric>` right after our
`<metric>` column, on the row of the same variant, a `table` number where there is one, else the
`figure` one; a reported variant of OURS we have no row for gets a row of its own (source "reported
(paper)"). Block points and dataset statistics never become table rows: `block_points` and
`dataset_stats` show them. What the paper does not give stays empty.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from msr_utils.data.registry import DATASETS

FILE = Path("data/paper_reported.csv")
COLUMNS = ["dataset", "variant", "paper_row", "metric", "value", "kind", "where"]
KINDS = ("table", "figure")  # preferred first
SOURCE = "reported (paper)"
PAPER_ROW, PREFIX = "paper_row", "paper_"
NOTE = ("`paper_*` columns: the paper's reported numbers (Ye et al., AAAI-25) for the same variant, from "
        f"`{FILE}` (each with its source); `paper_row` names the method as the paper does. Plain numbers come "
        "from the paper's Table 3 and its GRU4Rec study via a third-party transcription; \"≈\" marks a number "
        "read off a figure (Figure 4, ± 0.2). Its splits and models are not ours.")
METRIC = re.compile(r"(auc|gauc|(hr|ndcg|mrr)@[1-9]\d*)")
# Variants of ours that a reported number may sit beside (evaluate, baselines, ablations).
OURS = ("zero_shot", "fine_tuned", "tallrec", "no_recurrence", "no_image_summary", "no_candidate_image",
        "block_1", "block_2", "block_3", "block_5", "block_all",
        "pop", "gru4rec", "sasrec", "gru4rec_title", "gru4rec_image", "gru4rec_summary")
BLOCK_POINT = re.compile(r"block_point_([1-9])")  # Figure 5: the n-th block size, its value unknown
STATS_VARIANT = "dataset"
STATS = {"users": "users", "items": "items", "interactions": "interactions", "avg_seq_len": "seq_len_mean"}


def load(path: Path) -> pd.DataFrame:
    """The validated reported numbers; a ValueError names the file, line and field of a bad entry."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's reported numbers (columns {', '.join(COLUMNS)})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    for i, row in table.iterrows():
        _check(row, f"{path}, line {i + 2}")
    key = ["dataset", "variant", "metric", "kind"]
    twice = table[table.duplicated(key, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        same = twice[(twice[key] == first[key]).all(axis=1)]
        raise ValueError(f"{path}: {' / '.join(first[key])} is given {len(same)} times "
                         f"(lines {', '.join(str(i + 2) for i in same.index)})")
    return table.astype({"value": float})


def _check(row: pd.Series, at: str) -> None:
    empty = [c for c in COLUMNS if not row[c].strip()]
    if empty:
        raise ValueError(f"{at}: empty {', '.join(empty)}")
    if row["dataset"] not in DATASETS:
        raise ValueError(f"{at}: dataset {row['dataset']!r} is not one of {', '.join(DATASETS)}")
    if row["kind"] not in KINDS:
        raise ValueError(f"{at}: kind {row['kind']!r} is not one of {', '.join(KINDS)}")
    variant, metric, value = row["variant"], row["metric"], pd.to_numeric(row["value"], errors="coerce")
    if variant == STATS_VARIANT:
        if metric not in STATS:
            raise ValueError(f"{at}: metric {metric!r} of variant 'dataset' is not one of {', '.join(STATS)}")
        if not value >= 0:  # NaN fails too
            raise ValueError(f"{at}: value {row['value']!r} is not a number >= 0")
        return
    if variant not in OURS and not BLOCK_POINT.fullmatch(variant):
        raise ValueError(f"{at}: variant {variant!r} is none of ours ({', '.join(OURS)}), "
                         "block_point_<n> or dataset")
    if not METRIC.fullmatch(metric):
        raise ValueError(f"{at}: metric {metric!r} is not auc, gauc, hr@K, ndcg@K or mrr@K")
    if not 0 <= value <= 100:  # NaN fails too
        raise ValueError(f"{at}: value {row['value']!r} is not a number from 0 to 100 (metrics x 100)")


def shown(path: Path, dataset: str | None = None) -> pd.DataFrame:
    """The metric numbers that sit beside our rows (variants of OURS), one per (dataset, variant,
    metric): the `table` number where the paper's tables give one, else the `figure` one."""
    reported = load(path)
    rows = reported[reported["variant"].isin(OURS)]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    rank = rows["kind"].map({k: i for i, k in enumerate(KINDS)})
    return (rows.assign(_rank=rank).sort_values("_rank", kind="stable")
            .drop_duplicates(["dataset", "variant", "metric"]).drop(columns="_rank").sort_index())


def side_by_side(table: pd.DataFrame, dataset: str, path: Path, extra: bool = True) -> pd.DataFrame:
    """`table` (one row per variant, metrics x 100) with the paper's numbers for `dataset` beside ours;
    with `extra`, a row of its own for each reported variant of OURS that `table` lacks."""
    every = shown(path)
    mine = every[every["dataset"] == dataset]
    metrics = list(dict.fromkeys(every["metric"]))  # the same columns for every dataset
    out = table.drop(columns=[c for c in table.columns if c.startswith(PREFIX)])
    wide = (mine.pivot(index="variant", columns="metric", values="value")
            .reindex(columns=metrics).add_prefix(PREFIX))
    wide.insert(0, PAPER_ROW, mine.groupby("variant")["paper_row"].first())
    wide = wide.reindex([v for v in OURS if v in wide.index]).rename_axis("variant").reset_index()
    missing = wide[~wide["variant"].isin(out["variant"])]
    if extra and len(missing):
        out = pd.concat([out, pd.DataFrame({"dataset": dataset, "variant": missing["variant"], "source": SOURCE,
                                            "profile": "paper", "model": missing[PAPER_ROW]})],
                        ignore_index=True)
    out = out.merge(wide, on="variant", how="left")
    return out[ordered(list(out.columns), metrics)]


def display(table: pd.DataFrame, dataset: str, path: Path) -> pd.DataFrame:
    """A copy of `table` (side_by_side's) for markdown: each `paper_<metric>` cell a string, "83.17"
    for a `table` number, "≈ 80.8" for a `figure` one, None where the paper gives none."""
    kinds = shown(path, dataset).set_index(["variant", "metric"])["kind"].to_dict()
    out = table.copy()
    for column in [c for c in table.columns if c.startswith(PREFIX) and c != PAPER_ROW]:
        metric = column[len(PREFIX):]
        out[column] = pd.Series([None if pd.isna(v) else _cell(v, kinds.get((variant, metric), "table"))
                                 for variant, v in zip(table["variant"], table[column])], index=table.index, dtype=object)
    return out


def _cell(value: float, kind: str) -> str:
    return f"≈ {value:.1f}" if kind == "figure" else f"{value:.2f}"


def block_points(dataset: str, path: Path) -> pd.DataFrame:
    """Figure 5's AUC (x 100) at its five block sizes for `dataset`, in increasing block size: columns
    point (1..5; the sizes themselves are not legible), auc, kind. Empty where the paper gives none."""
    reported = load(path)
    rows = reported[(reported["dataset"] == dataset) & (reported["metric"] == "auc")
                    & reported["variant"].str.fullmatch(BLOCK_POINT.pattern)]
    out = pd.DataFrame({"point": rows["variant"].str.extract(BLOCK_POINT.pattern, expand=False).astype(int),
                        "auc": rows["value"], "kind": rows["kind"]})
    return out.sort_values("point").reset_index(drop=True)


def dataset_stats(dataset: str, path: Path, ours: dict) -> pd.DataFrame:
    """The paper's users, items, interactions and average sequence length for `dataset` beside ours
    after k-core. `ours`: results/<dataset>/data_prep.json (users, items, interactions, seq_len_mean),
    optionally with dataset.json's `source` and `limit_users`, which label a cut (the shipped
    sample, the first N users): then ours are not the whole data set's."""
    reported = load(path)
    rows = reported[(reported["dataset"] == dataset) & (reported["variant"] == STATS_VARIANT)].set_index("metric")
    cut = []
    if ours.get("source") == "sample":
        cut.append("the shipped sample (data/sample)")
    if ours.get("limit_users"):
        cut.append(f"the first {ours['limit_users']} users")
    scope = "after k-core" + (f", of {' and '.join(cut)} (a cut, not the whole data set)" if cut else "")
    out = pd.DataFrame({
        "stat": list(STATS),
        "paper": [rows["value"].get(s) for s in STATS],
        "ours": [ours.get(key) for key in STATS.values()],
        "ours_scope": scope,
        "where": [rows["where"].get(s) for s in STATS],
    })
    return out.astype({"paper": float, "ours": float})


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
