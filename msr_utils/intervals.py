"""How sure the test metrics are: 95% intervals and paired comparisons, resampling test groups.

A group is one test row's candidates (1 positive + 20 negatives): the unit the metrics average over.

- Interval of a metric: a seeded percentile bootstrap over groups (`scipy.stats.bootstrap`): draw the
  groups with replacement, recompute the metric on the drawn groups (the pooled AUC over all their
  candidates, as in the tables; the others are means of per-group values), and take the 2.5 and
  97.5 percentiles of the replicates.
- A row trained with several seeds (the baselines) shows the mean over its seeds. Its bootstrap draws
  the seeds with replacement too, independently of the groups: a replicate is the mean, over the
  drawn seeds, of the metric on the drawn groups. The interval so holds the test-set spread and the
  training-seed spread (a two-level bootstrap; with 3 seeds the seed part is coarse).
- Paired comparison of rows A and B on the same groups: the interval of A - B from the same
  bootstrap (each replicate draws the groups once for both rows), and a two-sided p-value from a
  paired permutation test (`scipy.stats.permutation_test`, permutation_type="samples"): under "A and
  B score alike", the two rows' scores of a group are exchangeable, so each group's candidates are
  swapped between A and B at random. A row with several seeds takes part with each of its seeds
  (the same swaps for every seed, the statistic averaged over them).

Every function takes `Scored` rows built from the long score tables of stages 05 and 06 (one line
per candidate: group, label, score). All numbers are fractions (x 100 happens in the tables).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from msr_utils import metrics

LEVEL = 0.95
RESAMPLES = 2000
PAIRED = ("auc", "gauc", "hr@5", "mrr@5")  # the metrics the paired tests report
CELLS = 20_000_000  # floats one batch of replicates may hold (about 160 MB): the batch size follows


@dataclass(frozen=True)
class Pooled:
    """Candidates sorted by score, for the pooled AUC under any weighting of their groups."""
    ids: np.ndarray     # (n,) the weight column of each candidate (its group, or a row x group)
    labels: np.ndarray  # (n,) 1 = positive
    starts: np.ndarray  # first index of each run of equal scores

    @classmethod
    def of(cls, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> "Pooled":
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        return cls(ids[order], labels[order].astype(float), np.flatnonzero(np.r_[True, s[1:] != s[:-1]]))

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """AUC when candidate i counts weights[:, ids[i]] times: (B, n_ids) -> (B,). Tied pairs 0.5,
        as sklearn's roc_auc_score (which a test checks it against on explicitly resampled tables)."""
        w = weights[:, self.ids]
        pos = np.add.reduceat(w * self.labels, self.starts, axis=1)  # (B, distinct scores)
        neg = np.add.reduceat(w * (1 - self.labels), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives scoring strictly lower
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


@dataclass(frozen=True)
class Seed:
    """One trained model's scores on the groups."""
    values: pd.DataFrame  # per-group metrics (metrics.per_group), index = the sorted group ids
    codes: np.ndarray     # (n,) each candidate's group, as a position in `values.index`
    labels: np.ndarray
    scores: np.ndarray
    pooled: Pooled        # the same candidates sorted by score (pooled AUC)


@dataclass(frozen=True)
class Scored:
    """A row of a result table scored on the test groups: one Seed per training seed."""
    name: str
    seeds: tuple[Seed, ...]

    @property
    def groups(self) -> pd.Index:
        return self.seeds[0].values.index

    def metric(self, name: str, idx: np.ndarray) -> np.ndarray:
        """`name` on the groups idx (B, G) drawn by position, per seed: (B, S)."""
        if name == "auc":
            counts = _counts(idx, len(self.groups))
            return np.stack([s.pooled.auc(counts) for s in self.seeds], axis=1)
        return np.stack([s.values[name].to_numpy()[idx].mean(-1) for s in self.seeds], axis=1)

    def point(self, name: str) -> float:
        """`name` on every group, the mean over seeds (what the tables show)."""
        return float(self.metric(name, np.arange(len(self.groups))[None])[0].mean())


def scored(name: str, scores: pd.DataFrame, ks: Iterable[int], group_col: str, seed_col: str | None = None,
           expect_size: int | None = None) -> Scored:
    """A Scored row from a long table (group_col, label, score[, seed_col]: one Seed per seed)."""
    parts = [scores] if seed_col is None else [part for _, part in scores.groupby(seed_col, sort=True)]
    out = []
    for part in parts:
        values = metrics.per_group(part, ks, group_col, expect_size=expect_size)
        codes = values.index.get_indexer(part[group_col])
        labels, points = part[metrics.LABEL].to_numpy(dtype=float), part[metrics.SCORE].to_numpy(dtype=float)
        out.append(Seed(values, codes, labels, points, Pooled.of(codes, labels, points)))
    if len({tuple(s.values.index) for s in out}) > 1:
        raise ValueError(f"{name}: its seeds were scored on different groups")
    return Scored(name, tuple(out))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of n positions occurs in each row of idx (B, m): (B, n)."""
    idx = np.atleast_2d(idx)
    flat = idx + n * np.arange(len(idx))[:, None]
    return np.bincount(flat.ravel(), minlength=n * len(idx)).reshape(len(idx), n).astype(float)


def _mean_over(per_seed: np.ndarray, seed_idx: np.ndarray | None) -> np.ndarray:
    """(B, S) per-seed values -> (B,): the mean over the drawn seeds (all seeds when not drawn)."""
    if seed_idx is None:
        return per_seed.mean(1)
    return np.take_along_axis(per_seed, np.atleast_2d(seed_idx), 1).mean(1)


def _batch(rows: Sequence[Scored]) -> int:
    n = sum(len(s.scores) for r in rows for s in r.seeds)
    return max(1, CELLS // max(n, 1))


def _bootstrap(rows: Sequence[Scored], statistic, n_resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of statistic(group idx, per row its seed idx or None), drawing the groups
    and, for each row with several seeds, its seeds; NaN with fewer than 2 groups."""
    G = len(rows[0].groups)
    if G < 2:  # nothing to resample (the twin profile's single test user): no interval
        return float("nan"), float("nan")
    multi = [len(r.seeds) > 1 for r in rows]
    data = (np.arange(G),) + tuple(np.arange(len(r.seeds)) for r, m in zip(rows, multi) if m)

    def stat(g, *drawn, axis=-1):
        it = iter(drawn)
        seed_idx = [next(it) if m else None for m in multi]
        return statistic(np.atleast_2d(g), seed_idx).reshape(np.shape(g)[:-1])

    res = stats.bootstrap(data, stat, n_resamples=n_resamples, vectorized=True, method="percentile",
                          confidence_level=level, rng=np.random.default_rng(seed), batch=_batch(rows))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(row: Scored, name: str, n_resamples: int = RESAMPLES, seed: int = 0,
             level: float = LEVEL) -> tuple[float, float]:
    """The `level` bootstrap interval of metric `name` for one row (groups and seeds drawn)."""
    return _bootstrap([row], lambda g, s: _mean_over(row.metric(name, g), s[0]), n_resamples, seed, level)


def _same_groups(a: Scored, b: Scored) -> None:
    if not a.groups.equals(b.groups):
        only = a.groups.symmetric_difference(b.groups)
        raise ValueError(f"{a.name} and {b.name} are not scored on the same test groups: {len(only)} group(s) "
                         f"in one only (e.g. {', '.join(map(str, only[:3]))})")


def difference_interval(a: Scored, b: Scored, name: str, n_resamples: int = RESAMPLES, seed: int = 0,
                        level: float = LEVEL) -> tuple[float, float]:
    """The interval of `name`(a) - `name`(b): both rows on the same drawn groups in each replicate."""
    _same_groups(a, b)
    return _bootstrap([a, b], lambda g, s: _mean_over(a.metric(name, g), s[0]) - _mean_over(b.metric(name, g), s[1]),
                      n_resamples, seed, level)


def permutation_p(a: Scored, b: Scored, name: str, n_resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of `name`(a) - `name`(b) under random swaps of a group's scores between a and b."""
    _same_groups(a, b)
    G = len(a.groups)
    if G < 2:  # the exact test over one group's 2 swaps: the observed difference and its negation
        return 1.0
    pairs = list(itertools.product(a.seeds, b.seeds))
    stacked = [_stack(sa, sb, G) for sa, sb in pairs]  # ids 0..G-1: a's groups, G..2G-1: b's

    def side(ids: np.ndarray) -> np.ndarray:
        """The metric of the rows whose ids are drawn, per (a seed, b seed) pair: (B, pairs)."""
        if name == "auc":
            counts = _counts(ids, 2 * G)
            return np.stack([pooled.auc(counts) for pooled, _ in stacked], axis=1)
        return np.stack([values[name].to_numpy()[ids].mean(-1) for _, values in stacked], axis=1)

    def stat(x, y, axis=-1):
        x2, y2 = np.atleast_2d(x), np.atleast_2d(y)
        diff = (side(x2) - side(y2)).mean(1)
        return np.round(diff, 12).reshape(np.shape(x)[:-1])  # a row against itself: exactly 0

    res = stats.permutation_test((np.arange(G), np.arange(G) + G), stat, permutation_type="samples",
                                 vectorized=True, n_resamples=n_resamples, alternative="two-sided",
                                 rng=np.random.default_rng(seed), batch=_batch([a, b]))
    return float(res.pvalue)


def _stack(a: Seed, b: Seed, G: int) -> tuple[Pooled, pd.DataFrame]:
    """Two seeds' candidates as one table: a's groups have ids 0..G-1, b's G..2G-1."""
    pooled = Pooled.of(np.r_[a.codes, b.codes + G], np.r_[a.labels, b.labels], np.r_[a.scores, b.scores])
    return pooled, pd.concat([a.values, b.values], ignore_index=True)


# --- table columns ---------------------------------------------------------------------------------

LO, HI = "_lo", "_hi"


def columns(row: Scored, keys: Iterable[str], n_resamples: int = RESAMPLES, seed: int = 0,
            level: float = LEVEL) -> dict[str, float]:
    """{<metric>_lo, <metric>_hi} for each metric in keys, x 100, 2 decimals (the table's scale)."""
    out = {}
    for k in keys:
        lo, hi = interval(row, k, n_resamples, seed, level)
        out |= {k + LO: _x100(lo), k + HI: _x100(hi)}
    return out


def paired(a: Scored, others: Sequence[Scored], keys: Iterable[str] = PAIRED, n_resamples: int = RESAMPLES,
           seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """a against each other row: per metric the difference a - other (x 100), its interval, the
    permutation p-value, and `significant`: p < 1 - level and the interval excludes 0 (both must
    agree: for a row with several seeds the interval also holds the seed spread, the test does not)."""
    rows = []
    for b in others:
        row = {"variant": a.name, "versus": b.name}
        for k in keys:
            lo, hi = difference_interval(a, b, k, n_resamples, seed, level)
            p = permutation_p(a, b, k, n_resamples, seed)
            row |= {f"diff_{k}": _x100(a.point(k) - b.point(k)), f"diff_{k}{LO}": _x100(lo),
                    f"diff_{k}{HI}": _x100(hi), f"p_{k}": round(p, 4),
                    f"significant_{k}": bool(p < 1 - level and (lo > 0 or hi < 0))}
        rows.append(row)
    return pd.DataFrame(rows)


def _x100(x: float) -> float:
    return round(100 * x, 2) + 0.0  # + 0.0: no "-0.0"
