"""Ablations through params: titles mode (TALLRec-style), block_size 0, variant params, scratch
roots, ablation rows in the comparison and the block-size plot. No model runs here (fast)."""

import json

import pandas as pd
import pytest

from msr_utils import ablations, compare, evaluate, models, plots, prompts, scratch, users
from msr_utils.config import ConfigError, UserSummary, load_params
from msr_utils.data.schema import ITEM, TARGET, TARGET_POS, USER
from tests.conftest import set_params, write_scores
from tests.test_users import interactions, loo, texts_for, write_project


# --- titles mode -----------------------------------------------------------------------------------

def test_titles_mode_lists_the_history_oldest_first_and_never_the_target():
    inter = interactions()
    rows = users.prefixes(loo(inter), inter)
    prefs, blocks, stats = users.title_preferences(rows, texts_for(inter), "video")
    seq = inter.groupby(USER)[ITEM].agg(list)
    assert len(prefs) == len(rows) and stats["llm_calls"] == 0 and stats["mode"] == "titles"
    for user, pos, text in zip(prefs[USER], prefs[TARGET_POS], prefs[users.PREFERENCE]):
        for later in seq[user][pos:]:  # the target (unique title) and everything after it
            assert f"<{later}>" not in text, f"{later} leaked into the preference of {user}@{pos}"
        lines = text.splitlines()[1:]
        assert lines == [f"{n}. Title - 'clip <{i}>'." for n, i in enumerate(seq[user][:pos], start=1)]
        assert "description" not in text  # titles only, even when item summaries exist
    assert not any(f"<{t}>" in p for t in loo(inter)["test"][TARGET] for p in prefs[users.PREFERENCE])
    assert (blocks[users.BLOCK_INDEX] == 0).all() and list(blocks.columns) == users.USER_SUMMARY_COLUMNS


def test_titles_mode_runs_the_stage_without_loading_a_model(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("titles mode must not load a model")

    monkeypatch.setattr(models, "load_profile", no_model)
    params = write_project(tmp_path, tmp_path, mode="titles")
    prefs, _, stats = users.run(params, "microlens50k")
    assert stats["rows"] == len(prefs) == 13 and stats["block_states"] == 13
    assert prefs[users.PREFERENCE].str.startswith(prompts.USER_TITLES.split("{")[0]).all()
    assert users.evolution(params, "microlens50k", user="u1")["positions"].tolist() == ["0-6"]


# --- block_size 0 ----------------------------------------------------------------------------------

def test_block_size_zero_is_one_block_of_the_whole_history(project):
    assert users.block_ends(7, 0) == [7] and users.block_ends(0, 0) == []
    inter = interactions({"u1": 8})
    rows = users.prefixes(loo(inter), inter)
    cfg = UserSummary(block_size=0)
    states, finals = users.plan(rows, texts_for(inter), cfg, "video")
    assert len(states) == len(rows) and all(s.index == 0 and s.prev is None for s in states.values())
    assert all("/b0:" in k for k in finals)
    assert load_params(project / "params.yaml", {"user_summary.block_size": 0}).user_summary.block_size == 0
    with pytest.raises(ConfigError, match=r"user_summary.block_size = -1"):
        load_params(project / "params.yaml", {"user_summary.block_size": -1})


# --- variant params --------------------------------------------------------------------------------

def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "variants" else {f"{prefix}{k}": v}
    return out


def test_variant_params_are_base_plus_overrides(project):
    params = load_params(project / "params.yaml")
    root = project / "data" / "ablations" / "microlens50k" / "tallrec"
    vp = ablations.variant_params(params, "tallrec", root)
    assert vp.root == root
    base, got = flat(params.model_dump(exclude={"root"})), flat(vp.model_dump(exclude={"root"}))
    changed = {k: got[k] for k in base if got[k] != base[k]}
    expected = {**params.ablations.variants["tallrec"], "eval.zero_shot": False,
                "user_summary.max_new_tokens": params.ablations.limit.max_new_tokens}
    assert changed == {k: v for k, v in expected.items() if base[k] != v}
    assert "user_summary.mode" in changed and "sft.candidate_image" in changed
    with pytest.raises(ConfigError, match="no variant 'nope'.*block_1"):
        ablations.overrides(params, "nope")


def test_unknown_or_forbidden_override_key_fails_naming_it(project):
    set_params(project, ablations={"variants": {"bad": {"user_summary.blok_size": 2}}})
    with pytest.raises(ConfigError, match=r"ablations.variants.*'bad'.*unknown key 'user_summary.blok_size'"):
        load_params(project / "params.yaml")
    set_params(project, ablations={"variants": {"bad": {"data.protocol": "loo"}}})
    with pytest.raises(ConfigError, match=r"'data.protocol' cannot be overridden"):
        load_params(project / "params.yaml")
    set_params(project, ablations={"variants": {"ok": {"user_summary.block_size": -1}}})
    params = load_params(project / "params.yaml")  # the key exists; its value is checked per variant
    with pytest.raises(ConfigError, match=r"(?s)ablation 'ok'.*user_summary.block_size = -1"):
        ablations.variant_params(params, "ok", project / "scratch")


def test_scratch_root_links_shared_inputs_cuts_splits_and_cleans_up(project):
    processed = project / "data" / "processed" / "microlens50k"
    processed.mkdir(parents=True)
    for name in ("train", "valid", "test"):
        pd.DataFrame({USER: [f"u{i}" for i in range(100)]}).to_parquet(processed / f"{name}.parquet")
    (processed / "dataset.json").write_text("{}")
    (project / "data" / "models").mkdir()
    params = load_params(project / "params.yaml")
    root = project / "data" / "ablations" / "microlens50k" / "block_1"
    made = ablations.link(params, "microlens50k", root)
    here = root / "data" / "processed" / "microlens50k"
    cap = params.ablations.limit
    assert len(pd.read_parquet(here / "train.parquet")) == cap.train_rows < 100
    assert not (here / "train.parquet").is_symlink()
    assert len(pd.read_parquet(here / "test.parquet")) == (cap.test_rows or 100)
    assert (here / "dataset.json").is_symlink() and (root / "data" / "models").is_symlink()
    assert (root / "data" / "cache").resolve() == (project / "data" / "cache").resolve()
    scratch.unlink(made)
    assert not (root / "data" / "processed").exists() and not (root / "data" / "models").exists()
    assert (processed / "train.parquet").is_file() and (project / "data" / "models").is_dir()


def test_evaluate_can_skip_zero_shot(project):
    params = load_params(project / "params.yaml", {"eval.zero_shot": False})
    assert evaluate.variants(params) == [evaluate.FINE_TUNED]
    with pytest.raises(ConfigError, match="nothing to score"):
        load_params(project / "params.yaml", {"eval.zero_shot": False, "eval.adapter": False})


# --- comparison and plot ---------------------------------------------------------------------------

def write_results(project, variants):
    """Stage 05's results, one ablation result per variant and the score files behind them; returns
    (params, each row's metrics as fractions)."""
    results = project / "results" / "microlens50k"
    (results / "ablations").mkdir(parents=True)
    m = write_scores(project, ablations=variants)
    pd.DataFrame({"dataset": "microlens50k", "variant": ["zero_shot", "fine_tuned"], "source": "pipeline check",
                  "profile": "tiny", "model": ["m", "m+lora"], "seed": [1, 1],
                  **{k: [round(100 * m[v][k], 2) for v in ("zero_shot", "fine_tuned")] for k in ("auc", "hr@5")},
                  "n_groups": [30, 30]}).to_csv(results / "results.csv", index=False)
    params = load_params(project / "params.yaml")
    for name in variants:
        (results / "ablations" / f"{name}.json").write_text(json.dumps({
            "variant": name, "overrides": params.ablations.variants[name], "profile": "tiny", "seed": 1,
            "metrics": {"auc": m[name]["auc"], "hr@5": m[name]["hr@5"], "ndcg@5": m[name]["ndcg@5"], "n_groups": 30,
                        "model": "m+lora", "seconds": 1.0}, "scored": "fine_tuned"}))
    return params, m


def baselines(m):
    return pd.DataFrame({"name": ["pop"], "auc": [m["pop"]["auc"]], "hr@5": [m["pop"]["hr@5"]], "n_groups": [30],
                         "n_rows": [630], "seconds": [0.1]})


def test_comparison_has_one_row_per_ablation_without_nan(project):
    params, m = write_results(project, ["tallrec", "block_1", "block_3", "block_all"])
    out = compare.table(params, "microlens50k", baselines(m))
    abl = out[out["source"] == compare.ABLATION_SOURCE]
    assert abl["variant"].tolist() == [v for v in params.ablations.variants if v in ("tallrec", "block_1", "block_3", "block_all")]
    assert abl.loc[abl["variant"] == "tallrec", "auc"].item() == round(100 * m["tallrec"]["auc"], 2)  # x 100
    ran = out[out["source"] != "reported (paper)"]  # the paper's no_image_summary etc.: rows of their own
    assert not ran[["auc", "auc_lo", "auc_hi", "hr@5", "seed", "n_groups", "profile"]].isna().any().any()
    assert not abl[["auc", "hr@5", "seed", "n_groups", "model", "profile"]].isna().any().any()
    md = (project / "results" / "microlens50k" / "comparison.md").read_text()
    assert "| block_all" in md and "## Ablations against block_3, paired" in md
    pairs = pd.read_csv(project / "results" / "microlens50k" / "paired.csv")
    assert pairs[pairs["variant"] == "fine_tuned"]["versus"].tolist() == ["zero_shot", "pop", "tallrec", "block_1",
                                                                          "block_3", "block_all"]
    assert pairs[pairs["variant"] == "block_3"]["versus"].tolist() == ["tallrec", "block_1", "block_all"]


def test_a_variant_left_out_of_ablations_run_says_so_and_has_no_row(project):
    """The small profile runs three variants: each other one writes a result naming the cut (its DVC
    outputs exist) and runs nothing; the comparison keeps the variants that ran."""
    set_params(project, ablations={"run": ["tallrec", "block_3"]})
    params, m = write_results(project, ["tallrec", "block_3"])
    result = ablations.run(params, "microlens50k", "block_1")  # no model, no data: it must not load any
    assert result["metrics"] is None and "ablations.run = tallrec, block_3" in result["skipped"]
    p = ablations.paths(params, "microlens50k", "block_1")
    assert json.loads(p["result"].read_text()) == result
    assert (p["root"] / "SKIPPED.txt").read_text().strip() == result["skipped"]
    out = compare.table(params, "microlens50k", baselines(m))
    assert set(out.loc[out["source"] == compare.ABLATION_SOURCE, "variant"]) == {"tallrec", "block_3"}


def test_block_sweep_has_one_point_per_size_and_the_plot_shows_them(project):
    params, m = write_results(project, ["block_all", "block_1", "block_5", "block_3", "no_recurrence"])
    table = compare.table(params, "microlens50k", baselines(m))
    sweep = compare.block_sweep(params, "microlens50k", table)
    assert sweep["block_size"].tolist() == ["1", "3", "5", "all"]  # variants only, not the main run
    assert sweep.loc[sweep["block_size"] == "3", "auc"].item() == round(100 * m["block_3"]["auc"], 2)  # not fine_tuned's
    assert (sweep["auc_lo"] <= sweep["auc"]).all() and (sweep["auc"] <= sweep["auc_hi"]).all()
    fig = plots.metric_by_block_size(sweep, "auc")
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 1, 2, 3] and list(line.get_ydata()) == sweep["auc"].tolist()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "3", "5", "all"]
    bars = fig.axes[0].collections[-1].get_segments()  # the error bars: one vertical segment per size
    assert [tuple(s[:, 1]) for s in bars] == list(zip(sweep["auc_lo"], sweep["auc_hi"]))


def test_block_plot_shows_the_papers_figure_5_by_position_beside_ours(project):
    params, m = write_results(project, ["block_1", "block_3"])
    sweep = compare.block_sweep(params, "microlens50k", compare.table(params, "microlens50k", baselines(m)))
    from msr_utils import reported
    paper = reported.block_points("microlens50k", params.root / reported.FILE)
    fig = plots.metric_by_block_size(sweep, "auc", paper)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "ours"
    assert list(fig.axes[1].lines[0].get_ydata()) == paper["auc"].tolist() == [76.2, 81.4, 83.2, 82.7, 80.2]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1.", "2.", "3.", "4.", "5."]  # no sizes
