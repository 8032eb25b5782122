"""msr_utils.rows: the rows stages 03-05 read and their items (user_summary.rows, item_summary.items)."""

import pandas as pd

from msr_utils import rows, users
from msr_utils.config import load_params
from msr_utils.data.schema import CANDIDATES, HISTORY, TARGET_POS, TIME, USER

from tests.conftest import ROOT


def splits() -> dict[str, pd.DataFrame]:
    """Four train rows, two valid, three test; user u<k> has items u<k>-0 ... and candidates c<k>-*."""
    def part(users_, pos=2):
        return pd.DataFrame({USER: users_, TARGET_POS: pos, HISTORY: [[f"{u}-0", f"{u}-1"] for u in users_],
                             CANDIDATES: [[f"{u}-2", f"c{u}-neg"] for u in users_]})
    return {"train": part(["t1", "t2", "t3", "t4"]), "valid": part(["v1", "v2"]), "test": part(["s1", "s2", "s3"])}


def interactions(tables) -> pd.DataFrame:
    return pd.DataFrame([(u, f"{u}-{n}", n) for t in tables.values() for u in t[USER] for n in range(3)],
                        columns=[USER, "item_id", TIME])


def params(**overrides):
    return load_params(ROOT / "params.yaml", {"base.profile": "tiny", **overrides})


def test_all_keeps_every_row_and_used_cuts_train_and_test_as_sft_and_scoring_do():
    tables = splits()
    every = rows.used(params(), tables)
    assert {s: len(t) for s, t in every.items()} == {"train": 4, "valid": 2, "test": 3}
    cut = rows.used(params(**{"user_summary.rows": "used", "sft.limit": 2, "eval.limit": 1}), tables)
    assert {s: t[USER].tolist() for s, t in cut.items()} == {"train": ["t1", "t2"], "valid": ["v1", "v2"],
                                                              "test": ["s1"]}
    no_cap = rows.used(params(**{"user_summary.rows": "used", "sft.limit": 0}), tables)  # 0 = every row
    assert {s: len(t) for s, t in no_cap.items()} == {"train": 4, "valid": 2, "test": 3}


def test_keep_used_and_used_items_follow_the_split_rows():
    tables = splits()
    p = params(**{"user_summary.rows": "used", "sft.limit": 1, "eval.limit": 2})
    prefixes = users.prefixes(tables, interactions(tables))
    kept = rows.keep_used(p, prefixes, tables)
    assert list(zip(kept[rows.SPLIT], kept[USER])) == [("train", "t1"), ("valid", "v1"), ("valid", "v2"),
                                                       ("test", "s1"), ("test", "s2")]
    items = rows.used_items(p, prefixes, tables)
    expected = {f"{u}-{n}" for u in ("t1", "v1", "v2", "s1", "s2") for n in range(3)} | {
        f"c{u}-neg" for u in ("t1", "v1", "v2", "s1", "s2")}
    assert items == expected  # t2's history and candidates are not read by any stage
    # a train row of user t1 at another position is another row: not kept
    more = pd.concat([tables["train"].iloc[[0]].assign(**{TARGET_POS: 1, HISTORY: [["t1-0"]]}), tables["train"]])
    assert rows.keep_used(p, users.prefixes({**tables, "train": more}, interactions(tables)),
                          {**tables, "train": more})[USER].tolist()[:1] == ["t1"]
    assert len(rows.keep_used(p, users.prefixes({**tables, "train": more}, interactions(tables)),
                              {**tables, "train": more})) == 5


def test_the_small_profile_generates_only_for_used_rows():
    p = params(**{"base.profile": "small"})
    assert p.user_summary.rows == "used" and p.item_summary.items == "used" and p.sft.limit > 0
    assert p.models_in_use.vlm is None and not p.item_summary.title_only
    # no VLM: the stages that would run it run the LM, and every record names the LM
    assert p.models_in_use.role("vlm") == "lm" and p.models_in_use.recommender == p.models_in_use.lm
    twin = params(**{"base.profile": "twin"}).models_in_use
    assert twin.role("vlm") == "vlm" and twin.recommender == twin.vlm and twin.role("lm") == "lm"
