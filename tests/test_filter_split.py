import numpy as np
import pandas as pd
import pytest

from msr_utils.data import filter, split
from msr_utils.data.negatives import sample_negatives
from msr_utils.data.schema import interactions_frame

NEG = {"train": 1, "valid": 20, "test": 20}


def random_log(seed=0, users=200, items=300, n=4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return interactions_frame(rng.integers(0, users, n).astype(str), rng.zipf(1.5, n).clip(0, items).astype(str),
                              rng.integers(0, 10**9, n))


def test_kcore_reaches_a_fixed_point_in_cascades():
    # u3 drops (1 item) -> item c falls to 1 user -> u2 falls to 1 item -> ...
    df = interactions_frame(["u1", "u1", "u2", "u2", "u3", "u4", "u4"],
                            ["a", "b", "a", "c", "c", "a", "b"], range(7))
    out, passes = filter.kcore(df, 2, 2)
    assert sorted(zip(out["user_id"], out["item_id"])) == [("u1", "a"), ("u1", "b"), ("u4", "a"), ("u4", "b")]
    assert passes >= 3


def test_kcore_result_satisfies_thresholds_and_is_stable():
    df, _ = filter.order_and_dedupe(random_log())
    out, _ = filter.kcore(df, 5, 3)
    assert len(out) > 0
    assert out.groupby("user_id").size().min() >= 5 and out.groupby("item_id").size().min() >= 3
    again, passes = filter.kcore(out, 5, 3)
    assert passes == 1 and again.equals(out)


def test_dedupe_keeps_first_and_counts():
    df = interactions_frame(["u", "u", "u"], ["a", "b", "a"], [3, 1, 2])
    out, dropped = filter.order_and_dedupe(df)
    assert dropped == 1 and out["item_id"].tolist() == ["b", "a"] and out["timestamp"].tolist() == [1, 2]


def test_first_users_follows_file_order():
    df = interactions_frame(["b", "a", "c", "b"], ["1", "2", "3", "4"], range(4))
    out = filter.first_users(df, 2, pd.Series(["c", "b", "a"]))
    assert set(out["user_id"]) == {"c", "b"}
    assert filter.first_users(df, 0, pd.Series(["c"])).equals(df)


@pytest.fixture(scope="module")
def log():
    df, _ = filter.order_and_dedupe(random_log(1))
    return filter.kcore(df, 5, 2)[0]


def _user_items(df):
    return df.groupby("user_id")["item_id"].agg(set)


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_rows_history_strictly_before_target_and_candidates(log, protocol):
    rows = (split.paper_rows(log, 6, (0.8, 0.1, 0.1), 7) if protocol == "paper"
            else split.loo_rows(log, 4))
    rows = split.add_candidates(rows, log, NEG, 7)
    seqs = log.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id")["item_id"].agg(list)
    seen = _user_items(log)
    for name, part in rows.items():
        assert len(part) > 0
        for r in part.itertuples():
            assert r.target not in r.history
            if protocol == "loo":  # history = the items right before the target, in order
                assert list(r.history) == seqs[r.user_id][max(r.target_pos - 4, 0):r.target_pos]
                assert seqs[r.user_id][r.target_pos] == r.target
            cands = list(r.candidates)
            assert cands[0] == r.target and len(cands) == 1 + NEG[name]
            assert len(set(cands)) == len(cands)
            assert not set(cands[1:]) & seen[r.user_id]


def test_loo_positions(log):
    rows = split.loo_rows(log, 50)
    length = log.groupby("user_id").size()
    assert (rows["test"]["target_pos"].to_numpy() == length[rows["test"]["user_id"]].to_numpy() - 1).all()
    assert (rows["valid"]["target_pos"].to_numpy() == length[rows["valid"]["user_id"]].to_numpy() - 2).all()
    assert len(rows["train"]) == int((length - 3).sum())  # positions 1 .. n-3


def test_paper_keeps_most_popular_items_in_time_order_and_splits_users(log):
    rows = split.paper_rows(log, 3, (0.8, 0.1, 0.1), 7)
    pop = log.groupby("item_id").size()
    users = [set(p["user_id"]) for p in rows.values()]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    n = sum(map(len, users))
    assert n == log["user_id"].nunique() and abs(len(users[0]) / n - 0.8) < 0.02
    seqs = log.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id")["item_id"].agg(list)
    for r in pd.concat(rows.values()).itertuples():
        kept = [*r.history, r.target]
        assert len(kept) == 3 and r.target_pos == 2
        assert kept == [i for i in seqs[r.user_id] if i in kept]  # time order
        others = set(seqs[r.user_id]) - set(kept)
        assert all(pop[o] <= min(pop[k] for k in kept) for o in others)  # the most popular ones


def test_negatives_are_seeded_and_unseen():
    df = interactions_frame(["u"] * 3 + ["v"], ["a", "b", "c", "a"], range(4))
    items = np.array(["a", "b", "c", "d", "e"])
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    negs = sample_negatives(np.array(["u", "u", "v"]), 2, df, items, rng())
    assert (negs == sample_negatives(np.array(["u", "u", "v"]), 2, df, items, rng())).all()
    assert set(negs[0]) == {"d", "e"} == set(negs[1])  # the only unseen ones, no repeat
    assert "a" not in negs[2] and len(set(negs[2])) == 2
    with pytest.raises(ValueError, match="fewer than 3 unseen"):
        sample_negatives(np.array(["u"]), 3, df, items, rng())
