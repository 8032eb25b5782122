import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from msr_utils import intervals, metrics

KS = (1, 5)
KEYS = ["auc", "gauc", "hr@1", "ndcg@1", "mrr@1", "hr@5", "ndcg@5", "mrr@5"]


def groups(n: int, size: int = 21, signal: float = 0.3, seed: int = 0, ties: bool = True) -> pd.DataFrame:
    """n groups of `size` candidates, the first positive; scores rounded to 1 decimal (ties) when asked."""
    rng = np.random.default_rng(seed)
    label = np.tile(np.r_[1, np.zeros(size - 1, int)], n)
    score = rng.random(n * size) + signal * label
    return pd.DataFrame({"group": np.repeat([f"g{i:03d}" for i in range(n)], size), "label": label,
                         "score": np.round(score, 1) if ties else score})


def drawn(df: pd.DataFrame, idx) -> pd.DataFrame:
    """The table the bootstrap means: the groups at positions idx, each copy a group of its own."""
    names = np.sort(df["group"].unique())
    return pd.concat([df[df["group"] == names[i]].assign(group=f"copy{j}") for j, i in enumerate(idx)])


def test_per_group_values_average_to_the_metrics():
    df = groups(20)
    mean = metrics.per_group(df, KS, "group").mean()
    got = metrics.evaluate(df, KS, "group")
    for k in KEYS[1:]:
        assert mean[k] == pytest.approx(got[k])


def test_the_statistic_on_a_resample_is_the_metric_of_the_resampled_table():
    """Brute force: the metric of explicitly concatenated drawn groups (pooled AUC with sklearn)."""
    df = groups(5)
    row = intervals.scored("a", df, KS, "group")
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 5, size=(7, 5))
    for k in KEYS:
        fast = row.metric(k, idx)[:, 0]
        slow = [metrics.evaluate(drawn(df, i), KS, "group")[k] for i in idx]
        assert fast == pytest.approx(slow), k
    weights = intervals._counts(idx, 5)
    pooled = intervals.Pooled.of(row.seeds[0].codes, row.seeds[0].labels, row.seeds[0].scores)
    assert pooled.auc(weights) == pytest.approx([roc_auc_score(d["label"], d["score"]) for d in map(lambda i: drawn(df, i), idx)])


@pytest.mark.parametrize("k", KEYS)
def test_the_interval_covers_the_metric(k):
    row = intervals.scored("a", groups(40), KS, "group")
    lo, hi = intervals.interval(row, k, 500, seed=3)
    assert lo <= row.point(k) <= hi and lo < hi


def test_a_perfect_scorer_has_a_degenerate_interval():
    df = groups(30, ties=False).assign(score=lambda d: d["label"] + 0.01 * np.arange(len(d)) % 0.5)
    row = intervals.scored("perfect", df, KS, "group")
    for k in ("auc", "gauc", "hr@1", "mrr@5"):
        assert intervals.interval(row, k, 300) == (1.0, 1.0)


def test_the_interval_is_seeded_and_narrows_with_more_groups():
    small, large = (intervals.scored("a", groups(n, seed=5), KS, "group") for n in (20, 400))
    assert intervals.interval(small, "auc", 300, seed=1) == intervals.interval(small, "auc", 300, seed=1)
    width = [np.diff(intervals.interval(r, "auc", 300, seed=1))[0] for r in (small, large)]
    assert width[1] < width[0] / 2  # ~ 1 / sqrt(groups)


def test_seeds_add_their_spread_to_the_interval():
    df = groups(60, signal=0.5, ties=False)
    good, bad = df, df.assign(score=np.random.default_rng(9).random(len(df)))
    one = intervals.scored("one", df, KS, "group")
    seeds = intervals.scored("seeds", pd.concat([good.assign(seed=1), bad.assign(seed=2), good.assign(seed=3)]),
                             KS, "group", seed_col="seed")
    assert seeds.point("auc") == pytest.approx((2 * one.point("auc") + intervals.scored("b", bad, KS, "group").point("auc")) / 3)
    lo, hi = intervals.interval(seeds, "auc", 500)
    lo1, hi1 = intervals.interval(one, "auc", 500)
    assert lo <= seeds.point("auc") <= hi and hi - lo > hi1 - lo1  # the seeds disagree: a wider interval


def test_a_row_against_itself_differs_by_zero_with_p_one():
    row = intervals.scored("a", groups(25), KS, "group")
    out = intervals.paired(row, [row], ["auc", "gauc", "hr@5", "mrr@5"], 300).iloc[0]
    for k in ("auc", "gauc", "hr@5", "mrr@5"):
        assert (out[f"diff_{k}"], out[f"diff_{k}_lo"], out[f"diff_{k}_hi"], out[f"p_{k}"]) == (0, 0, 0, 1)
        assert not out[f"significant_{k}"]


@pytest.mark.parametrize("k", ["auc", "mrr@5"])
def test_the_permutation_p_value_is_the_exact_swap_test(k):
    """Brute force over all 2^4 swaps of 4 groups' scores between the rows (scipy goes exact here)."""
    a_df, b_df = groups(4, seed=1, signal=0.6), groups(4, seed=2, signal=0.0)
    a, b = (intervals.scored(n, d, KS, "group") for n, d in (("a", a_df), ("b", b_df)))
    names = np.sort(a_df["group"].unique())

    def diff(swap):
        sides = [pd.concat([(b_df if s else a_df)[a_df["group"] == g] if side == 0 else
                            (a_df if s else b_df)[b_df["group"] == g] for g, s in zip(names, swap)])
                 for side in (0, 1)]
        return metrics.evaluate(sides[0], KS, "group")[k] - metrics.evaluate(sides[1], KS, "group")[k]

    observed = diff((0, 0, 0, 0))
    null = np.array([diff(s) for s in itertools.product((0, 1), repeat=4)])
    exact = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    assert observed != 0
    assert intervals.permutation_p(a, b, k, 100) == pytest.approx(exact)


def test_a_clear_difference_is_significant_and_its_interval_excludes_zero():
    good = groups(80, signal=0.8, ties=False, seed=1)
    noise = good.assign(score=np.random.default_rng(2).random(len(good)))
    a, b = intervals.scored("good", good, KS, "group"), intervals.scored("noise", noise, KS, "group")
    out = intervals.paired(a, [b], ["auc", "hr@5"], 500).iloc[0]
    assert out["diff_auc"] > 0 and out["diff_auc_lo"] > 0 and out["p_auc"] < 0.01 and out["significant_auc"]
    assert out["diff_auc_lo"] <= out["diff_auc"] <= out["diff_auc_hi"]


def test_rows_on_other_groups_are_refused():
    a = intervals.scored("a", groups(5), KS, "group")
    b = intervals.scored("b", groups(6), KS, "group")
    with pytest.raises(ValueError, match="not scored on the same test groups"):
        intervals.permutation_p(a, b, "auc", 100)


def test_one_group_has_no_interval():
    row = intervals.scored("a", groups(1), KS, "group")
    assert all(np.isnan(intervals.interval(row, "auc", 100)))
    other = intervals.scored("b", groups(1, seed=4), KS, "group")
    out = intervals.paired(row, [other], ["auc"], 100).iloc[0]  # the twin profile's single test user
    assert out["p_auc"] == 1 and np.isnan(out["diff_auc_lo"]) and not out["significant_auc"]
