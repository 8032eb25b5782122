"""Stage 06 baselines: each learns a tiny synthetic sequence task, the runner writes a full table,
and the same seed gives the same scores.

Synthetic task: 40 items in a ring, every user's sequence is s, s+1, ..., s+5 (mod 40); the last
item is the target. Starts are skewed towards low ids, so the targets are also popular (Pop can
learn something); only a model of the order can rank the one true next item first.
"""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from msr_utils.baselines import features, run
from msr_utils.baselines.common import GROUP, Vocab, evaluate_rows, long_table, user_sequences
from msr_utils.baselines.pop import Pop
from msr_utils.baselines.train import TrainConfig, softmax_items, windows
from msr_utils.config import load_params
from msr_utils.data.images import placeholder
from tests.conftest import params_text, set_params

N_ITEMS, HIST, DS = 40, 5, "microlens50k"
WORDS = ("apple river guitar tiger castle rocket violin desert ocean pencil camera dragon forest "
         "hammer island jacket kitten ladder mango needle orange pirate queen robot saddle tomato "
         "umbrella volcano wizard yacht zebra anchor bakery cactus dolphin engine falcon glacier "
         "harbor igloo").split()
NAMES = ["pop", "gru4rec", "sasrec", "gru4rec_image", "gru4rec_summary", "gru4rec_title"]


def _rows(rng, n_users: int, n_neg: int, first_user: int) -> pd.DataFrame:
    weights = 1.0 / np.arange(1, N_ITEMS + 1)
    starts = rng.choice(N_ITEMS, size=n_users, p=weights / weights.sum())
    out = []
    for u, s in enumerate(starts):
        seq = [f"i{(s + j) % N_ITEMS}" for j in range(HIST + 1)]
        others = [f"i{k}" for k in range(N_ITEMS) if f"i{k}" not in seq]
        negs = list(rng.choice(others, size=n_neg, replace=False))
        out.append({"user_id": f"u{first_user + u}", "target": seq[-1], "target_pos": HIST,
                    "history": seq[:-1], "candidates": [seq[-1], *negs]})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scratch project whose microlens50k folder holds the synthetic ring task."""
    root = tmp_path_factory.mktemp("baselines")
    (root / "params.yaml").write_text(params_text())
    data = root / "data" / "processed" / DS
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, n, neg) in enumerate([("train", 240, 1), ("valid", 40, 10), ("test", 40, 10)]):
        _rows(rng, n, neg, 1000 * i).to_parquet(data / f"{name}.parquet", index=False)
    ids = [f"i{k}" for k in range(N_ITEMS)]
    for item, word in zip(ids, WORDS):
        placeholder(word, item).save(data / "images" / f"{item}.png")
    pd.DataFrame({"item_id": ids, "title": WORDS, "description": None,
                  "image_path": [f"data/processed/{DS}/images/{i}.png" for i in ids], "image_url": None,
                  "image_placeholder": True}).to_parquet(data / "items.parquet", index=False)
    (root / "data" / "summaries" / DS).mkdir(parents=True)
    pd.DataFrame({"item_id": ids, "summary": [f"A short video about a {w}." for w in WORDS]}).to_parquet(
        root / "data" / "summaries" / DS / "item_summaries.parquet", index=False)
    set_params(root, baselines={"epochs": 40, "patience": 40, "lr": 0.01, "dropout": 0.0, "batch_size": 32},
               eval={"ks": [1, 5, 10]})
    return root


def _splits(root):
    return {s: pd.read_parquet(root / "data" / "processed" / DS / f"{s}.parquet") for s in ("train", "valid", "test")}


def _fit_score(root, name, **overrides):
    params = load_params(root / "params.yaml", overrides)
    items = pd.read_parquet(root / "data" / "processed" / DS / "items.parquet")
    rows = _splits(root)
    model, info = run.build(name, params, items, Vocab(items["item_id"]), DS)
    model.fit(rows["train"], rows["valid"])
    scores = model.score(rows["test"])
    return evaluate_rows(rows["test"], scores, [1, 5, 10]), scores, info


@pytest.mark.parametrize("name", NAMES)
def test_each_baseline_beats_random_on_the_ring_task(project, name):
    result, _, _ = _fit_score(project, name)
    # 11 candidates: chance is AUC 0.5, HR@1 0.09, HR@5 0.45
    assert result["auc"] > 0.6
    if name != "pop":  # knowing the order finds the one true next item
        assert result["hr@1"] > 0.8 and result["auc"] > 0.9, result  # Pop: hr@1 0.53


def test_same_seed_same_scores_other_seed_other_scores(project):
    for name in ("gru4rec", "sasrec"):
        _, a, _ = _fit_score(project, name, **{"baselines.epochs": 3})
        _, b, _ = _fit_score(project, name, **{"baselines.epochs": 3})
        _, c, _ = _fit_score(project, name, **{"baselines.epochs": 3, "base.seed": 7})
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.allclose(x, z) for x, z in zip(a, c))


def test_early_stopping_on_a_cutoff_outside_eval_ks(project):
    _, _, _ = _fit_score(project, "gru4rec", **{"baselines.epochs": 2, "baselines.early_stop_metric": "ndcg@2"})


def test_runner_writes_a_row_per_requested_baseline(project):
    params = load_params(project / "params.yaml", {"baselines.epochs": 2, "baselines.seeds": 1})
    table = run.run(params, DS)
    assert table["name"].tolist() == NAMES
    assert not table.isna().any().any()
    assert {"auc", "gauc", "hr@5", "ndcg@10", "mrr@1", "seconds"} <= set(table.columns)
    saved = json.loads((project / "results" / DS / "baselines.json").read_text())
    assert list(saved["models"]) == NAMES and saved["test_rows"] == 40
    assert saved["image_encoder"].startswith("efficientnet-lite0")
    assert saved["models"]["gru4rec_image"]["image_cache_hit"]  # features cached by the tests above
    summary = saved["models"]["gru4rec_summary"]
    assert 0 <= summary["summary_missing"] <= summary["summary_items"] == len(pd.read_parquet(run.paths(params, DS)["items"]))
    assert pd.read_csv(project / "results" / DS / "baselines.csv")["name"].tolist() == NAMES


def test_runner_trains_each_seed_and_reports_mean_and_spread(project):
    params = load_params(project / "params.yaml", {"baselines.epochs": 1, "baselines.seeds": 2,
                                                   "baselines.models": ["pop", "gru4rec"]})
    table = run.run(params, DS).set_index("name")
    per_seed = pd.read_csv(project / "results" / DS / "baselines.csv")
    assert per_seed[["name", "seed"]].values.tolist() == [["pop", 2024], ["gru4rec", 2024], ["gru4rec", 2025]]
    gru = per_seed[per_seed["name"] == "gru4rec"]
    assert gru["auc"].nunique() == 2  # the seeds train different models
    assert table.loc["gru4rec", "auc"] == pytest.approx(gru["auc"].mean())
    assert table.loc["gru4rec", "auc_std"] == pytest.approx(gru["auc"].std(ddof=1))
    assert table["n_seeds"].tolist() == [1, 2] and table.loc["pop", "auc_std"] == 0  # pop: deterministic, once
    assert {"hr@5_expected", "tied_share"} <= set(table.columns)
    saved = json.loads((project / "results" / DS / "baselines.json").read_text())["models"]["gru4rec"]
    assert list(saved["runs"]) == ["2024", "2025"] and saved["auc"] == pytest.approx(table.loc["gru4rec", "auc"])
    assert saved["std"]["auc"] == pytest.approx(table.loc["gru4rec", "auc_std"])


def test_worker_processes_give_the_numbers_of_one_process(project):
    """The runs are seeded one by one: 2 spawned workers (finishing in any order, features computed in
    a worker) = this process alone."""
    tables = {}
    for n in (1, 2):
        params = load_params(project / "params.yaml", {"baselines.epochs": 2, "baselines.seeds": 2,
                                                       "baselines.workers": n,
                                                       "baselines.models": ["pop", "gru4rec", "gru4rec_title"]})
        assert run.workers(params, 5) == n
        shutil.rmtree(run.paths(params, DS)["cache"], ignore_errors=True)  # each n computes its features
        run.run(params, DS)
        tables[n] = pd.read_csv(project / "results" / DS / "baselines.csv")
        saved = json.loads((project / "results" / DS / "baselines.json").read_text())
        assert saved["workers"] == n and saved["models"]["gru4rec_title"]["title_cache_hit"] is False
    assert tables[1][["name", "seed"]].values.tolist() == [
        ["pop", 2024], ["gru4rec", 2024], ["gru4rec", 2025], ["gru4rec_title", 2024], ["gru4rec_title", 2025]]
    pd.testing.assert_frame_equal(tables[1].drop(columns="seconds"), tables[2].drop(columns="seconds"))


def test_workers_default_to_the_cores_and_never_exceed_the_runs(project):
    params = load_params(project / "params.yaml", {"baselines.workers": 0})
    assert run.workers(params, 100) == len(os.sched_getaffinity(0)) and run.workers(params, 1) == 1


def test_summary_by_hand():
    per_seed = pd.DataFrame({"name": ["a", "b", "b", "b"], "seed": [1, 1, 2, 3], "auc": [0.5, 0.6, 0.7, 0.8],
                             "n_groups": 10, "n_rows": 210, "seconds": [1.0, 1.0, 2.0, 3.0]})
    out = run.summary(per_seed).set_index("name")
    assert out.loc["b", ["auc", "auc_std", "n_seeds", "seeds", "seconds"]].tolist() == pytest.approx(
        [0.7, 0.1, 3, "1 2 3", 6.0])
    assert out.loc["a", ["auc", "auc_std", "n_seeds"]].tolist() == [0.5, 0.0, 1]


@pytest.mark.parametrize("seeds", [0, -1, 1.5])
def test_seeds_must_be_a_positive_int(project, seeds):
    from msr_utils.config import ConfigError
    with pytest.raises(ConfigError, match=r"baselines\.seeds"):
        load_params(project / "params.yaml", {"baselines.seeds": seeds})


def test_runner_rejects_an_unknown_baseline(project):
    from msr_utils.config import ConfigError
    with pytest.raises(ConfigError, match="baselines.models"):
        load_params(project / "params.yaml", {"baselines.models": ["pop", "bert4rec"]})


# ---- pieces --------------------------------------------------------------------------------------

def _row(user, target, pos, history, candidates):
    return {"user_id": user, "target": target, "target_pos": pos, "history": history, "candidates": candidates}


def test_user_sequences_rebuild_loo_prefixes_once():
    rows = pd.DataFrame([_row("a", "x2", 2, ["x0", "x1"], ["x2", "n"]), _row("a", "x3", 3, ["x1", "x2"], ["x3", "n"]),
                         _row("a", "x1", 1, ["x0"], ["x1", "n"]), _row("b", "y1", 1, ["y0"], ["y1", "n"])])
    assert user_sequences(rows) == [["x0", "x1", "x2", "x3"], ["y0", "y1"]]


def test_pop_counts_each_training_user_once():
    train = pd.DataFrame([_row("a", "p", 2, ["p", "q"], ["p", "z"]), _row("b", "q", 1, ["p"], ["q", "z"])])
    pop = Pop()
    pop.fit(train)
    assert [s.tolist() for s in pop.score(pd.DataFrame([_row("c", "p", 1, ["q"], ["p", "q", "z"])]))] == [[2, 2, 0]]


def test_long_table_groups_each_row_so_a_user_counts_per_target():
    rows = pd.DataFrame([_row("a", "t1", 3, ["h"], ["t1", "n1", "n2"]), _row("a", "t2", 4, ["h"], ["t2", "n1"])])
    table = long_table(rows, [np.array([0.9, 0.1, 0.2]), np.array([0.1, 0.5])])
    assert table["label"].tolist() == [1, 0, 0, 1, 0] and table[GROUP].nunique() == 2
    result = evaluate_rows(rows, [np.array([0.9, 0.1, 0.2]), np.array([0.1, 0.5])], [1])
    assert result["n_groups"] == 2 and result["hr@1"] == 0.5


def test_windows_predict_every_transition_once():
    cut = windows([np.arange(1, 8)], max_len=3)
    assert [w.tolist() for w in cut] == [[4, 5, 6, 7], [1, 2, 3, 4]]
    assert sum(len(w) - 1 for w in cut) == 6


def test_vgg19_fails_clearly_without_torchvision(project):
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or broken as with torch 2.13 CPU: the case under test
        pass
    else:
        pytest.skip("torchvision works here")
    items = pd.read_parquet(project / "data" / "processed" / DS / "items.parquet").head(2)
    with pytest.raises(features.FeatureError, match="torchvision"):
        features.image_features(items, project, "vgg19")


def test_pixel_stand_in_says_so(project):
    items = pd.read_parquet(project / "data" / "processed" / DS / "items.parquet").head(3)
    feats, info = features.image_features(items, project, "pixels-stand-in")
    assert feats.shape == (3, 256) and "stand-in" in info["image_encoder"]
    assert not np.allclose(feats[0], feats[1])


def test_train_config_reads_params(project):
    cfg = TrainConfig.from_params(load_params(project / "params.yaml"))
    assert cfg.epochs == 40 and cfg.ks == (1, 5, 10) and cfg.threads == 1


# ---- the full-data command (here on a small cut of the shipped sample) ----------------------------

def test_full_command_writes_the_table_and_resumes_after_stage_01(tmp_path, capsys):
    from msr_utils.baselines import full
    from tests.conftest import new_project
    (tmp_path / "project").mkdir()
    main = new_project(tmp_path / "project")
    out, work = tmp_path / "out", tmp_path / "scratch"
    argv = ["--dataset", DS, "--params", str(main / "params.yaml"), "--out", str(out), "--scratch", str(work),
            "--set", "data.limit_users=40", "--set", "baselines.epochs=1", "--set", "baselines.models=[pop,gru4rec]",
            "--set", "baselines.seeds=2"]
    full.main(argv)
    per_seed = pd.read_csv(out / "baselines.csv")
    assert per_seed[["name", "seed"]].values.tolist() == [["pop", 2024], ["gru4rec", 2024], ["gru4rec", 2025]]
    saved = json.loads((out / "baselines.json").read_text())
    assert (saved["users"], saved["test_rows"], saved["candidates"], saved["seeds"]) == (40, 4, 21, [2024, 2025])
    md = (out / "baselines.md").read_text()
    assert "a cut: 40 users" in md and "Tie rule" in md and "HR@10 rand." in md and "| pop (deterministic" in md
    assert " ± " in md and "nan" not in md and "--set baselines.seeds=2" in md  # the command that regenerates it
    train = work / "data" / "processed" / DS / "train.parquet"
    made = train.stat().st_mtime_ns
    full.main(argv)  # same settings: stage 01 is skipped, the numbers are the same
    assert train.stat().st_mtime_ns == made and "stage 01: up to date" in capsys.readouterr().err
    again = pd.read_csv(out / "baselines.csv")
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), per_seed.drop(columns="seconds"))
    assert not full.prepared(load_params(work / "params.yaml", {"data.limit_users": 41}), DS)


def test_sampled_softmax_targets_point_at_their_items_and_full_is_exact():
    nxt = torch.tensor([[5, 9, 0], [2, 2, 40]])  # 0 = pad
    gen = torch.Generator().manual_seed(0)
    items, targets = softmax_items(nxt, 40, 0, gen)
    assert torch.equal(items, torch.arange(1, 41)) and torch.equal(targets, nxt - 1)  # full: as before
    assert torch.equal(softmax_items(nxt, 40, 40, gen)[0], items)  # a sample covering the catalogue: full
    items, targets = softmax_items(nxt, 40, 6, gen)
    assert len(items) <= 6 + 5 and torch.equal(items, items.unique())  # targets + the draws, once each
    assert torch.equal(items[targets[nxt > 0]], nxt[nxt > 0]) and (targets[nxt == 0] == -1).all()


@pytest.mark.parametrize("name", ["gru4rec", "gru4rec_title"])
def test_sampled_softmax_still_learns_the_ring_task(project, name):
    result, _, _ = _fit_score(project, name, **{"baselines.softmax_items": 8})  # 8 of 40 items a step
    assert result["hr@1"] > 0.8 and result["auc"] > 0.9, result
