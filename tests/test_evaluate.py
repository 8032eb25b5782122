"""Stage 05 as the notebook runs it, on a scratch project: prepared sample, tiny models, synthetic
item summaries, user preferences and a LoRA adapter."""

import json
import math

import pandas as pd
import pytest
from peft import LoraConfig, get_peft_model

from msr_utils import evaluate, models
from msr_utils.config import load_params
from tests.conftest import ROOT, prepared_project, set_params

DATASET = "microlens50k"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared 20-user sample and tiny models, built once for the module."""
    root = tmp_path_factory.mktemp("prepared")
    prepared_project(root, model_seed=0)
    return root


@pytest.fixture
def ready(project, prepared):
    """The scratch project with every input of stage 05 except the adapter."""
    set_params(project, data={"limit_users": 20})
    for folder in ("processed", "models"):
        (project / "data" / folder).symlink_to(prepared / "data" / folder)
    params = load_params(project / "params.yaml")
    p = evaluate.paths(params, DATASET)
    items, test = pd.read_parquet(p["items"]), pd.read_parquet(p["test"])
    p["preferences"].parent.mkdir(parents=True)
    pd.DataFrame({"item_id": items["item_id"], "summary": "a cat on a sofa in a bright kitchen"}).to_parquet(
        p["item_summaries"])
    pd.DataFrame({"split": "test", "user_id": test["user_id"], "target_pos": test["target_pos"],
                  "preference": "The user appears to have a preference for music and funny cats."}).to_parquet(
        p["preferences"])
    return project


def write_adapter(project) -> None:
    """A LoRA adapter that changes the scores (B not zero), saved where stage 04 puts it, with the
    base model it belongs to."""
    folder, out = project / "data" / "models" / "tiny-vlm", project / "data" / "adapters" / DATASET
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                        init_lora_weights=False)
    get_peft_model(models.load(folder, kind="vlm").model, config).save_pretrained(out)
    (out / "sft_params.json").write_text(json.dumps({"base_model": f"data/models/tiny-vlm@{models.fingerprint(folder)}"}))


def test_run_writes_metrics_scores_tables_and_plots(ready):
    write_adapter(ready)
    params = load_params(ready / "params.yaml", {"eval.ks": [1, 5]})
    out = evaluate.run(params, DATASET)
    p = evaluate.paths(params, DATASET)

    saved = json.loads(p["metrics"].read_text())
    assert saved == json.loads(json.dumps(out["metrics"]))
    keys = {"auc", "gauc", "n_groups", "n_rows"} | {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 5)}
    for variant in ("zero_shot", "fine_tuned"):
        numbers = {k: v for k, v in saved[variant].items() if isinstance(v, (int, float))}
        assert keys <= set(numbers) and not any(math.isnan(v) for v in numbers.values())
        assert 0 <= saved[variant]["auc"] <= 1 and 0 < saved[variant]["answer_mass"] < 1
    n_rows = len(pd.read_parquet(p["test"]))
    assert saved["zero_shot"]["n_groups"] == n_rows and saved["zero_shot"]["n_rows"] == 21 * n_rows
    assert saved["profile"] == "tiny" and saved["seed"] == params.base.seed
    assert saved["fine_tuned"]["model"].startswith(saved["zero_shot"]["model"])

    scores = pd.read_parquet(p["scores"])
    assert list(scores.columns) == evaluate.SCORE_COLUMNS and len(scores) == 2 * 21 * n_rows
    by_variant = scores.pivot_table(index=["user_id", "item_id"], columns="variant", values="score")
    assert (by_variant["zero_shot"] - by_variant["fine_tuned"]).abs().max() > 1e-4  # adapter applied

    table = pd.read_csv(p["table_csv"])
    assert table["variant"].tolist() == ["zero_shot", "fine_tuned"]  # the paper's number sits beside ours
    assert table.loc[1, ["paper_row", "paper_auc", "paper_hr@5", "paper_mrr@5"]].tolist() == ["MLLM-MSR", 83.17, 78.23, 60.38]
    assert table.loc[0, ["paper_row", "paper_auc"]].tolist() == ["LLaVA", 52.75]
    cols = list(table.columns)  # the paper's metrics first, each with its interval, the paper's number beside
    assert cols[cols.index("auc"):cols.index("auc") + 8] == ["auc", "auc_lo", "auc_hi", "paper_auc",
                                                            "hr@5", "hr@5_lo", "hr@5_hi", "paper_hr@5"]
    for k in ("auc", "gauc", "hr@1", "mrr@5", "ndcg@5"):
        assert ((table[k + "_lo"] <= table[k]) & (table[k] <= table[k + "_hi"])).all(), k
    assert table["source"].str.contains("pipeline check").all() and set(table["seed"]) == {params.base.seed}
    md = p["table_md"].read_text()
    assert "paper_auc" in md and "data/paper_reported.csv" in md and "not results" in md
    assert md.index("## AUC, HR@5, MRR@5") < md.index("## Fine-tuned against zero-shot, paired") < md.index("## Every metric")
    assert out["paired"]["versus"].tolist() == ["zero_shot"] and "bootstrap" in md
    for variant in ("zero_shot", "fine_tuned"):
        curve = pd.read_csv(p["hr_at_k"] / f"{variant}.csv")
        assert list(curve.columns) == ["k", "hr"] and curve["hr"].iloc[-1] == 1.0 and curve["hr"].is_monotonic_increasing
    assert {f.name for f in p["plots"].iterdir()} == {"score_distribution.png", "hr_at_k.png"}
    assert len(out["example"]) == 21 and out["example"]["label"].sum() == 1


def test_variants_scored_in_two_processes_equal_one_process(ready):
    """eval.workers 2: each variant in a spawned process with its own model; the same scores and metrics."""
    write_adapter(ready)
    runs = {}
    for n in (1, 2):
        params = load_params(ready / "params.yaml", {"eval.workers": n, "eval.limit": 4})
        metrics_ = evaluate.run(params, DATASET)["metrics"]
        runs[n] = (pd.read_parquet(evaluate.paths(params, DATASET)["scores"]),
                   {v: {k: x for k, x in metrics_[v].items() if k not in ("seconds", "candidates_per_s")}
                    for v in ("zero_shot", "fine_tuned")})
    pd.testing.assert_frame_equal(runs[1][0], runs[2][0])
    assert runs[1][1] == runs[2][1]
    assert runs[2][1]["fine_tuned"]["model"].endswith("-lora")  # the worker applied the adapter


def test_missing_adapter_fails_naming_path_and_fix(ready):
    params = load_params(ready / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"data/adapters/microlens50k.*stage 04.*eval.adapter: false"):
        evaluate.run(params, DATASET)


def test_zero_shot_only_with_limit(ready):
    params = load_params(ready / "params.yaml", {"eval.adapter": False, "eval.limit": 1})
    saved = evaluate.run(params, DATASET)["metrics"]
    assert "fine_tuned" not in saved and saved["zero_shot"]["n_groups"] == 1 and saved["adapter"] is None


def test_results_md_names_the_model_that_scored(ready):
    """The LM where a profile has no VLM (small), the VLM where it has one (it said `None` for small)."""
    params = load_params(ready / "params.yaml", {"eval.adapter": False, "eval.limit": 1})
    table = evaluate.run(params, DATASET)["table"]
    assert "model `data/models/tiny-vlm`" in evaluate.markdown(table, params, DATASET)
    small = load_params(ready / "params.yaml", {"base.profile": "small"})
    assert "model `data/models/small-lm`" in evaluate.markdown(table, small, DATASET)


def test_missing_user_preferences_names_stage_03(ready):
    params = load_params(ready / "params.yaml", {"eval.adapter": False})
    evaluate.paths(params, DATASET)["preferences"].unlink()
    with pytest.raises(FileNotFoundError, match="user_preferences.parquet.*stage 03"):
        evaluate.run(params, DATASET)


def test_adapter_trained_on_another_base_model_is_refused(ready):
    adapter = ready / "data" / "adapters" / DATASET
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")  # refused before it is read
    (adapter / "sft_params.json").write_text(json.dumps({"base_model": "data/models/tiny-vlm@0000000000"}))
    with pytest.raises(ValueError, match="trained on 'data/models/tiny-vlm@0000000000'.*rerun stage 04"):
        evaluate.run(load_params(ready / "params.yaml"), DATASET)


def test_source_says_what_ran():
    def of(profile):
        return evaluate.source(load_params(ROOT / "params.yaml", {"base.profile": profile}))
    assert "pipeline check (tiny random model)" in of("tiny") and "real weights" not in of("tiny")
    assert "pipeline check (twin" in of("twin")
    small = of("small")
    assert small.startswith("ours: real weights data/models/small-lm") and "text only" in small
    assert "pipeline check" not in of("paper") and "llava" in of("paper")
