"""Ranking metrics for candidate lists with one positive and N negatives (paper: 1 + 20).

Input is a long table: one row per (group, candidate) with a group id (a user, or an evaluation
row), a binary label and a score (P("Yes")). Groups are formed explicitly from the group column,
never by reshaping. Every group must hold exactly one positive, at least one negative and no NaN
score; with `expect_size`, exactly that many candidates. Otherwise a ValueError names the group.

Ties are explicit:
- HR@K, NDCG@K, MRR@K use the pessimistic rank of the positive, 1 + #negatives scoring >= it,
  so a constant scorer ranks every positive last and gets no credit (`ties="pessimistic"`, default).
  With `ties="expected"` they are the exact expectation under a uniformly random order of the tied
  candidates: the positive's rank is uniform over 1 + #above, ..., 1 + #above + #tied, so a constant
  scorer gets HR@K = K / (group size). Without ties both rules agree.
- AUC and GAUC count a tied (positive, negative) pair as 0.5 (as sklearn's roc_auc_score), which is
  already the expectation under a random tie order: they are the same under both rules.

AUC is pooled over all rows, as in the paper. GAUC is the uniform mean of per-group AUCs: each
group holds one positive, so this is the click-weighted GAUC of DIN, and each user counts once,
as in HR/NDCG/MRR. Metric functions of ranks share one signature: f(ranks, k, best=None) -> float
(ranks: pessimistic ranks; best: the best rank each positive could take in its tie, when averaging).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from msr_utils.data.schema import USER, check_columns

LABEL, SCORE = "label", "score"
DEFAULT_KS = (1, 3, 5, 10)
TIES = ("pessimistic", "expected")


def _fail(groups: np.ndarray, bad: np.ndarray, group_col: str, problem: str) -> None:
    """Raise naming the first few groups where `bad` is true (no-op when none is)."""
    if bad.any():
        ids = groups[bad]
        shown = ", ".join(repr(g) for g in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise ValueError(f"{len(ids)} {group_col} group(s) {problem}: {shown}")


def _negatives_vs_positive(
    df: pd.DataFrame, group_col: str, label_col: str, score_col: str, expect_size: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate groups; per group (sorted by id): #negatives, #scoring above, #tied with the positive."""
    check_columns(df, [group_col, label_col, score_col], "metrics input")
    codes, groups = pd.factorize(df[group_col], sort=True)
    if (codes < 0).any():
        raise ValueError(f"{int((codes < 0).sum())} row(s) have a missing {group_col}")
    groups = np.asarray(groups, dtype=object)
    n = len(groups)

    def count(mask: np.ndarray, where: np.ndarray = codes) -> np.ndarray:
        """Per-group number of true entries of mask."""
        return np.bincount(where, weights=mask, minlength=n)

    labels = df[label_col].to_numpy(dtype=float, na_value=np.nan)
    scores = df[score_col].to_numpy(dtype=float, na_value=np.nan)
    _fail(groups, count(~np.isin(labels, (0.0, 1.0))) > 0, group_col, f"have a {label_col} not in {{0, 1}}")
    _fail(groups, count(np.isnan(scores)) > 0, group_col, f"have a NaN {score_col}")
    pos = labels == 1
    n_pos, size = count(pos), np.bincount(codes, minlength=n)
    _fail(groups, n_pos == 0, group_col, "have no positive")
    _fail(groups, n_pos > 1, group_col, "have more than one positive")
    _fail(groups, size < 2, group_col, "have no negative")
    if expect_size is not None:
        _fail(groups, size != expect_size, group_col, f"do not have {expect_size} candidates")

    pos_score = np.empty(n)
    pos_score[codes[pos]] = scores[pos]
    neg, neg_codes = scores[~pos], codes[~pos]
    rival = pos_score[neg_codes]  # each negative's group positive score
    return size - 1, count(neg > rival, neg_codes), count(neg == rival, neg_codes)


def positive_ranks(
    df: pd.DataFrame, group_col: str = USER, label_col: str = LABEL, score_col: str = SCORE,
    expect_size: int | None = None,
) -> np.ndarray:
    """Pessimistic 1-based rank of each group's positive, one per group in sorted group-id order."""
    _, above, tied = _negatives_vs_positive(df, group_col, label_col, score_col, expect_size)
    return (1 + above + tied).astype(np.int64)


def _mean_at_k(ranks: np.ndarray, k: int, gain: Callable[[np.ndarray], np.ndarray],
               best: np.ndarray | None = None) -> float:
    """Mean over groups of `_at_k`."""
    return float(np.mean(_at_k(ranks, k, gain, best)))


def _at_k(ranks: np.ndarray, k: int, gain: Callable[[np.ndarray], np.ndarray],
          best: np.ndarray | None = None) -> np.ndarray:
    """Per group, gain(rank) where rank <= k, else 0. With `best`, each group's value is the mean of
    that over the ranks best..ranks (a uniformly random order of the tied candidates)."""
    worst = np.asarray(ranks)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if worst.size == 0 or (worst < 1).any() or (worst != np.round(worst)).any():
        raise ValueError("ranks must be a non-empty array of 1-based integer ranks")
    low = worst if best is None else np.asarray(best)
    if low.shape != worst.shape or (low < 1).any() or (low > worst).any() or (low != np.round(low)).any():
        raise ValueError("best must hold one 1-based integer rank per group, each <= its rank")
    r = np.arange(1, min(k, int(worst.max())) + 1)  # the ranks that can score
    in_tie = (r >= low[:, None]) & (r <= worst[:, None])  # (groups, ranks): exact, no sampling
    return (in_tie * gain(r.astype(float))).sum(1) / (worst - low + 1)


GAINS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hr": np.ones_like, "ndcg": lambda r: 1.0 / np.log2(r + 1), "mrr": np.reciprocal}


def hit_rate(ranks: np.ndarray, k: int, best: np.ndarray | None = None) -> float:
    """HR@K: share of groups whose positive ranks within the top k."""
    return _mean_at_k(ranks, k, GAINS["hr"], best)


def ndcg(ranks: np.ndarray, k: int, best: np.ndarray | None = None) -> float:
    """NDCG@K with one positive: mean of 1 / log2(rank + 1) over hits (ideal DCG is 1)."""
    return _mean_at_k(ranks, k, GAINS["ndcg"], best)


def mrr(ranks: np.ndarray, k: int, best: np.ndarray | None = None) -> float:
    """MRR@K: mean of 1 / rank over hits."""
    return _mean_at_k(ranks, k, GAINS["mrr"], best)


def evaluate(
    df: pd.DataFrame, ks: Iterable[int] = DEFAULT_KS, group_col: str = USER, label_col: str = LABEL,
    score_col: str = SCORE, expect_size: int | None = None, ties: str = "pessimistic",
) -> dict[str, float]:
    """All metrics: auc, gauc, hr@k, ndcg@k, mrr@k for k in ks, plus n_groups and n_rows. `ties`:
    pessimistic (a tie ranks the positive last) | expected (mean over random orders of the tie)."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    n_neg, above, tied = _negatives_vs_positive(df, group_col, label_col, score_col, expect_size)
    ranks = (1 + above + tied).astype(np.int64)
    best = (1 + above).astype(np.int64) if ties == "expected" else None
    out: dict[str, float] = {
        "auc": float(roc_auc_score(df[label_col].to_numpy(dtype=int), df[score_col].to_numpy(dtype=float))),
        "gauc": float(np.mean(1 - (above + 0.5 * tied) / n_neg)),  # per-group AUC, ties = 0.5
    }
    for k in ks:
        out |= {f"hr@{k}": hit_rate(ranks, k, best), f"ndcg@{k}": ndcg(ranks, k, best), f"mrr@{k}": mrr(ranks, k, best)}
    return out | {"n_groups": len(ranks), "n_rows": len(df)}


def per_group(
    df: pd.DataFrame, ks: Iterable[int] = DEFAULT_KS, group_col: str = USER, label_col: str = LABEL,
    score_col: str = SCORE, expect_size: int | None = None,
) -> pd.DataFrame:
    """Each group's own value of every metric but the pooled AUC (index: the group ids, sorted; columns
    gauc, hr@k, ndcg@k, mrr@k; pessimistic ties): `evaluate` reports their means. The bootstrap over
    groups (msr_utils.intervals) resamples these rows."""
    n_neg, above, tied = _negatives_vs_positive(df, group_col, label_col, score_col, expect_size)
    ranks = (1 + above + tied).astype(np.int64)
    out = {"gauc": 1 - (above + 0.5 * tied) / n_neg}
    for k in ks:
        out |= {f"{m}@{k}": _at_k(ranks, k, GAINS[m]) for m in ("hr", "ndcg", "mrr")}
    return pd.DataFrame(out, index=pd.Index(np.sort(df[group_col].unique()), name=group_col))


def tied_share(df: pd.DataFrame, group_col: str = USER, label_col: str = LABEL, score_col: str = SCORE) -> float:
    """Share of groups whose positive ties with at least one negative (where the two rules differ)."""
    _, _, tied = _negatives_vs_positive(df, group_col, label_col, score_col, None)
    return float(np.mean(tied > 0))
