"""Result tables as a reader sees them (results.md, comparison.md): the paper's metrics first, each
value with its 95% interval, the paper's number beside ours, paired differences marked.

The CSVs keep one number per cell: `<metric>`, `<metric>_lo`, `<metric>_hi` (msr_utils.intervals)
and `paper_<metric>` (msr_utils.reported); here they become cells such as "57.59 [48.07, 66.80]"."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from msr_utils.intervals import HI, LO

LEAD = ("auc", "hr@5", "mrr@5")  # the paper's metrics (its Table 3): every table leads with them
PAPER = "paper_"
ID_COLUMNS = ("dataset", "variant", "paper_row", "source", "profile", "model", "seed")


def arrange(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Columns in reading order: the ids, then per metric (the paper's three first) the value, its
    interval and the paper's number, then the rest (n_groups, ...)."""
    metrics = [k for k in LEAD if k in keys] + [k for k in keys if k not in LEAD]
    order = [c for c in ID_COLUMNS if c in table]
    for k in metrics:
        order += [c for c in (k, k + LO, k + HI, PAPER + k) if c in table]
    order += [c for c in table.columns if c.startswith(PAPER) and c not in order]  # the paper's, none of ours
    return table[order + [c for c in table.columns if c not in order]]


def _number(x) -> str | None:
    return None if pd.isna(x) else f"{x:.2f}"


def with_interval(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """A copy where each metric cell reads "value [lo, hi]" (its interval columns dropped)."""
    out = table.copy().astype(object)
    for k in keys:
        if k not in out:  # no value: no interval either
            out = out.drop(columns=[c for c in (k + LO, k + HI) if c in out])
            continue
        if k + LO in out:
            out[k] = [None if pd.isna(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if not pd.isna(lo) else _number(v)
                      for v, lo, hi in zip(table[k], table[k + LO], table[k + HI])]
            out = out.drop(columns=[k + LO, k + HI])
        else:
            out[k] = table[k].map(_number)
    return out


def lead(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's three metrics with their intervals, the paper's number beside each."""
    keys = [k for k in LEAD if k in table]
    shown = with_interval(table, keys)
    cols = [c for c in ("variant", "paper_row", "source") if c in shown]
    for k in keys:
        cols += [c for c in (k, PAPER + k) if c in shown]
    return shown[cols + [c for c in ("n_groups",) if c in shown]]


def paired_cells(paired: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One line per compared row: "Δ [lo, hi], p" per metric, with ' *' where significant."""
    out = {"variant": paired["variant"], "versus": paired["versus"]}
    for k in keys:
        out[f"Δ {k}"] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}], p {p:.3f}{' *' if s else ''}" if not pd.isna(lo)
                         else f"{d:+.2f}, p {p:.3f} (one test row: no interval)"
                         for d, lo, hi, p, s in zip(paired[f"diff_{k}"], paired[f"diff_{k}{LO}"],
                                                    paired[f"diff_{k}{HI}"], paired[f"p_{k}"],
                                                    paired[f"significant_{k}"])]
    return pd.DataFrame(out)


def markdown_rows(table: pd.DataFrame) -> str:
    """A markdown table; missing values shown as '–', integers kept integers."""
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="–")


INTERVAL_NOTE = ("Brackets: 95% interval from a seeded percentile bootstrap over test groups (a group = one "
                 "test row's candidates; the pooled AUC is recomputed on each resample); a baseline trained "
                 "with several seeds also resamples its seeds, so its interval holds the seed spread too "
                 "(msr_utils/intervals.py).")
PAIRED_NOTE = ("Δ = fine_tuned − the row, on the same test groups: its 95% bootstrap interval and the two-sided "
               "p-value of a paired permutation test (each group's scores swapped between the two rows at "
               "random). `*`: significant at 95% — p < 0.05 and the interval excludes 0.")
