"""The frozen-feature probe (msr_utils/probe.py): states read at the last real token, a planted signal
found and none invented, and the whole run on a tiny project against sklearn's AUC."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from msr_utils import models, probe, sft
from msr_utils.config import load_params
from msr_utils.data.schema import ITEM, USER
from tests.conftest import prepared_project

pytestmark = pytest.mark.usefixtures("one_thread")
DATASET = "microlens50k"


def test_states_are_read_at_each_texts_last_real_token(tiny_dir):
    loaded = models.load(tiny_dir / "tiny-lm", kind="lm")
    texts = ["a short one", "a much longer text than the first one, so the batch is padded", "mid length text"]
    batched = probe.last_states(loaded, texts, batch_size=3, progress=False)
    alone = np.concatenate([probe.last_states(loaded, [t], batch_size=1, progress=False) for t in texts])
    assert batched.shape == (3, loaded.model.config.hidden_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # a pad position would give the short texts one state


def test_the_probe_finds_a_planted_signal_and_invents_none():
    rng = np.random.default_rng(0)
    n, dim = 400, 32
    labels = np.tile([1, 0], n // 2)
    groups = np.repeat(np.arange(n // 2), 2)
    noise = rng.normal(size=(2 * n, dim))
    planted = noise.copy()
    planted[:, 3] += 1.5 * np.r_[labels, labels]  # one dimension carries the label
    for x, low, high in ((planted, 0.8, 1.0), (noise, 0.35, 0.65)):
        model = probe.fit(x[:n], labels, groups, seed=0)
        assert low <= roc_auc_score(labels, model.decision_function(x[n:])) <= high
        assert model.best_params_["logisticregression__C"] in probe.CS


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """20 users, the tiny models, fixed preferences and item summaries (stand-ins for stages 02 and 03),
    text-only examples."""
    root = tmp_path_factory.mktemp("probe")
    result = prepared_project(root, model_seed=1, sft={"limit": 0, "candidate_image": False})
    params = load_params(root / "params.yaml")
    p = sft.paths(params, DATASET)
    p["preferences"].parent.mkdir(parents=True)
    pd.concat([part[["user_id", "target_pos"]].assign(split=name, preference="short funny videos")
               for name, part in result.splits.items()]).to_parquet(p["preferences"])
    result.items[[ITEM]].assign(summary="a bright cover").to_parquet(p["item_summaries"])
    return root


def test_run_scores_every_valid_pair_and_pop_as_sklearn_does(project):
    params = load_params(project / "params.yaml")
    out = probe.run(params, DATASET, progress=False)
    assert json.loads((project / "results" / DATASET / "probe.json").read_text()) == out
    valid = pd.read_parquet(sft.paths(params, DATASET)["valid"])
    assert out["valid_pairs"] == len(valid) and out["train_examples"] == 2 * len(pd.read_parquet(
        sft.paths(params, DATASET)["train"]))
    for name in ("probe", "pop"):
        assert out[f"{name}_valid_auc_lo"] <= out[f"{name}_valid_auc"] <= out[f"{name}_valid_auc_hi"]
    assert out["probe_minus_pop_lo"] <= out["probe_valid_auc"] - out["pop_valid_auc"] <= out["probe_minus_pop_hi"]

    # Pop by hand: the pairs stage 04 scores (target + one seeded negative); per item, the train users
    # with it in a train row (history or target)
    pairs = sft.pick_rows(valid, "valid", 0, params.base.seed)
    train = pd.read_parquet(sft.paths(params, DATASET)["train"])
    users_of = train.assign(items=[[*h, t] for h, t in zip(train["history"], train["target"])]).explode("items")
    counts = users_of.drop_duplicates([USER, "items"])["items"].value_counts()
    scores = [counts.get(i, 0) for c in pairs["candidates"] for i in c]
    assert out["pop_valid_auc"] == pytest.approx(roc_auc_score(np.tile([1, 0], len(pairs)), scores))


def test_examples_with_images_are_refused_naming_the_switch(project):
    params = load_params(project / "params.yaml", {"sft.candidate_image": True})
    with pytest.raises(ValueError, match="sft.candidate_image=false"):
        probe.run(params, DATASET, progress=False)
