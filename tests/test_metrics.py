"""Ranking metrics: hand-computed cases, sklearn cross-checks, errors that name the group."""


import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from msr_utils.metrics import evaluate, hit_rate, mrr, ndcg, positive_ranks, tied_share


def frame(groups: dict) -> pd.DataFrame:
    """{group: (positive score, [negative scores])} -> long table, positive first in each group."""
    rows = [(g, 1, pos) for g, (pos, _) in groups.items()]
    rows += [(g, 0, s) for g, (_, negs) in groups.items() for s in negs]
    return pd.DataFrame(rows, columns=["user_id", "label", "score"])


def random_frame(n_groups: int, n_neg: int = 20, seed: int = 0, decimals: int | None = None) -> pd.DataFrame:
    """Shuffled 1 + n_neg candidates per group; rounding the scores creates ties."""
    rng = np.random.default_rng(seed)
    size = n_neg + 1
    labels = np.tile(np.r_[1, np.zeros(n_neg, int)], n_groups)
    scores = rng.random(n_groups * size) + 0.3 * labels  # positives score a bit higher
    if decimals is not None:
        scores = scores.round(decimals)
    df = pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(n_groups)], size),
                       "label": labels, "score": scores})
    return df.sample(frac=1, random_state=seed).reset_index(drop=True)


def per_group(df: pd.DataFrame):
    """(labels, scores) of each group in sorted group-id order: the slow reference path."""
    return [(g["label"].to_numpy(), g["score"].to_numpy()) for _, g in df.groupby("user_id", sort=True)]


def test_perfect_ranking():
    df = frame({"a": (0.9, [0.1, 0.2, 0.3]), "b": (0.8, [0.7, 0.0])})
    np.testing.assert_array_equal(positive_ranks(df), [1, 1])
    m = evaluate(df, ks=(1, 3))
    assert m == {"auc": 1.0, "gauc": 1.0, "hr@1": 1.0, "ndcg@1": 1.0, "mrr@1": 1.0,
                 "hr@3": 1.0, "ndcg@3": 1.0, "mrr@3": 1.0, "n_groups": 2, "n_rows": 7}


def test_positive_last():
    df = frame({"u": (0.0, list(np.linspace(0.05, 1, 20)))})
    np.testing.assert_array_equal(positive_ranks(df, expect_size=21), [21])
    m = evaluate(df, ks=(10, 21))
    assert (m["auc"], m["gauc"], m["hr@10"], m["ndcg@10"], m["mrr@10"]) == (0, 0, 0, 0, 0)
    assert m["hr@21"] == 1 and m["mrr@21"] == pytest.approx(1 / 21)
    assert m["ndcg@21"] == pytest.approx(1 / np.log2(22))


def test_hit_only_beyond_k():
    df = frame({"u": (0.5, [0.9, 0.8, 0.7, 0.1, 0.2])})  # rank 4
    m = evaluate(df, ks=(3, 5))
    assert (m["hr@3"], m["ndcg@3"], m["mrr@3"]) == (0, 0, 0)
    assert m["hr@5"] == 1 and m["mrr@5"] == 0.25 and m["ndcg@5"] == pytest.approx(1 / np.log2(5))
    assert m["gauc"] == pytest.approx(2 / 5)


def test_constant_scorer_gets_no_credit():
    df = frame({"a": (0.5, [0.5] * 20), "b": (0.5, [0.5] * 20)})
    np.testing.assert_array_equal(positive_ranks(df), [21, 21])
    m = evaluate(df)
    assert m["auc"] == m["gauc"] == 0.5
    assert all(m[f"{name}@{k}"] == 0 for name in ("hr", "ndcg", "mrr") for k in (1, 3, 5, 10))


def test_partial_tie_is_pessimistic_for_rank_and_half_for_auc():
    df = frame({"u": (0.5, [0.9, 0.5, 0.1])})  # one above, one tied, one below
    np.testing.assert_array_equal(positive_ranks(df), [3])
    m = evaluate(df, ks=(2, 3))
    assert m["hr@2"] == 0 and m["hr@3"] == 1 and m["mrr@3"] == pytest.approx(1 / 3)
    assert m["gauc"] == m["auc"] == 0.5  # (1 + 0.5) / 3


def test_one_group():
    m = evaluate(frame({"only": (0.6, [0.7, 0.2])}), ks=(1, 2))
    assert m["n_groups"] == 1 and m["n_rows"] == 3
    assert (m["hr@1"], m["hr@2"], m["mrr@2"], m["gauc"]) == (0, 1, 0.5, 0.5)


def test_gauc_weights_groups_uniformly():
    # a: 1 negative, AUC 1; b: 4 negatives, AUC 0. Size-weighted would give 2/7.
    df = frame({"a": (0.9, [0.1]), "b": (0.0, [0.1, 0.2, 0.3, 0.4])})
    assert evaluate(df)["gauc"] == 0.5


def test_ranks_follow_sorted_group_ids_and_ignore_row_order():
    df = frame({"b": (0.1, [0.9, 0.8]), "a": (0.9, [0.1, 0.2]), "c": (0.5, [0.9, 0.1])})
    np.testing.assert_array_equal(positive_ranks(df), [1, 3, 2])
    np.testing.assert_array_equal(positive_ranks(df.sample(frac=1, random_state=1)), [1, 3, 2])


def test_custom_columns():
    df = frame({7: (0.9, [0.1]), 3: (0.0, [0.5])}).rename(
        columns={"user_id": "row_id", "label": "y", "score": "p_yes"})
    np.testing.assert_array_equal(positive_ranks(df, "row_id", "y", "p_yes"), [2, 1])
    assert evaluate(df, ks=(1,), group_col="row_id", label_col="y", score_col="p_yes")["hr@1"] == 0.5


def test_pure_functions_by_hand():
    ranks = np.array([1, 2, 3, 11])
    assert hit_rate(ranks, 3) == 0.75
    assert mrr(ranks, 3) == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert ndcg(ranks, 3) == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 4)
    assert ndcg(ranks, 10) == ndcg(ranks, 3) and hit_rate(ranks, 11) == 1


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        hit_rate(np.array([1, 2]), k)


def test_ranks_match_brute_force_with_ties():
    df = random_frame(300, decimals=1)
    expected = [1 + np.sum((y == 0) & (s >= s[y == 1])) for y, s in per_group(df)]
    np.testing.assert_array_equal(positive_ranks(df), expected)


def test_auc_matches_sklearn():
    df = random_frame(200, decimals=2)
    assert evaluate(df)["auc"] == pytest.approx(roc_auc_score(df["label"], df["score"]))


def test_gauc_matches_mean_of_sklearn_group_aucs():
    df = random_frame(200, n_neg=5, decimals=1)  # coarse scores: many ties
    expected = np.mean([roc_auc_score(y, s) for y, s in per_group(df)])
    assert evaluate(df)["gauc"] == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_matches_sklearn(k):
    df = random_frame(200)  # continuous scores: no ties
    expected = np.mean([ndcg_score([y], [s], k=k) for y, s in per_group(df)])
    assert evaluate(df, ks=(k,))[f"ndcg@{k}"] == pytest.approx(expected)


@pytest.mark.parametrize("rows, message", [
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 0, 0.9), ("bad", 0, 0.1)], "no positive: 'bad'"),
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 1, 0.9), ("bad", 1, 0.1)], "more than one positive: 'bad'"),
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 1, 0.9)], "no negative: 'bad'"),
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 1, np.nan), ("bad", 0, 0.1)], "NaN score: 'bad'"),
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 2, 0.9), ("bad", 0, 0.1)], "label not in {0, 1}: 'bad'"),
    ([("ok", 1, 0.9), ("ok", 0, 0.1), ("bad", 1, 0.9), ("bad", 0, 0.1), ("bad", 0, 0.2)],
     "do not have 2 candidates: 'bad'"),
])
def test_errors_name_the_group(rows, message):
    df = pd.DataFrame(rows, columns=["user_id", "label", "score"])
    for call in (positive_ranks, evaluate):
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
            call(df, expect_size=2)


def test_missing_column_and_group_id():
    df = frame({"a": (0.9, [0.1])})
    with pytest.raises(ValueError, match="score"):
        evaluate(df.drop(columns="score"))
    with pytest.raises(ValueError, match="missing user_id"):
        evaluate(df.assign(user_id=[None, "a"]))


# ---- ties: expected value under a random order of the tied candidates ---------------------------

def test_expected_ties_by_hand():
    # 2 negatives above, 3 tied: the positive's rank is uniform over 3..6
    df = frame({"u": (0.5, [0.9, 0.8, 0.5, 0.5, 0.5, 0.1])})
    pess, exp = evaluate(df, ks=(3, 6)), evaluate(df, ks=(3, 6), ties="expected")
    assert pess["hr@3"] == 0 and exp["hr@3"] == 0.25
    assert exp["hr@6"] == 1 and exp["mrr@6"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / 4)
    assert exp["ndcg@3"] == pytest.approx(0.25 / np.log2(4))
    assert exp["auc"] == pess["auc"] and exp["gauc"] == pess["gauc"]  # ties count 0.5 in both
    assert hit_rate([6], 3, best=[3]) == 0.25 and hit_rate([6], 3) == 0


def test_expected_ties_of_a_constant_scorer_are_chance():
    df = frame({"a": (0.5, [0.5] * 20), "b": (0.5, [0.5] * 20)})
    m = evaluate(df, ties="expected")
    assert all(m[f"hr@{k}"] == pytest.approx(k / 21) for k in (1, 3, 5, 10))
    assert m["mrr@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 21)
    assert tied_share(df) == 1.0


def test_expected_equals_pessimistic_without_ties():
    df = random_frame(100)  # continuous scores
    assert evaluate(df, ties="expected") == evaluate(df)
    assert tied_share(df) == 0.0


def test_expected_ties_match_every_order_of_small_integer_scores():
    """Brute force: the pessimistic metric averaged over every order of each group's tied candidates."""
    rng = np.random.default_rng(3)
    ks = (1, 2, 3, 5)
    for trial in range(20):
        scores = rng.integers(0, 3, size=(4, 6))  # 4 groups of 6 candidates, positive first: many ties
        df = frame({f"g{i}": (s[0], list(s[1:])) for i, s in enumerate(scores)})
        per_order = []
        for i, s in enumerate(scores):
            # break ties by a permutation of the candidates: every order of the tied ones, equally often
            ranks = [1 + sum((s[j], p[j]) > (s[0], p[0]) for j in range(1, 6))
                     for p in itertools.permutations(range(6))]
            per_order.append(ranks)
        want = {f"{name}@{k}": np.mean([f(np.array(ranks), k) for ranks in per_order])  # f means over orders
                for name, f in (("hr", hit_rate), ("ndcg", ndcg), ("mrr", mrr)) for k in ks}
        got = evaluate(df, ks=ks, ties="expected")
        assert {key: got[key] for key in want} == pytest.approx(want), trial


def test_unknown_tie_rule_and_bad_best():
    with pytest.raises(ValueError, match="ties must be one of"):
        evaluate(frame({"a": (0.9, [0.1])}), ties="optimistic")
    with pytest.raises(ValueError, match="best must hold"):
        hit_rate(np.array([2, 3]), 1, best=np.array([3, 1]))
