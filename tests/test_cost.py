"""Cost report: token counts of each stage under the paper's settings, with the twin tokenizers."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from msr_utils import cost, models, prompts, recommender, scoring, twin
from msr_utils.config import load_params
from msr_utils.paths import artifacts
from tests.conftest import ROOT, prepared_project

DATASET = "microlens50k"


@pytest.fixture(scope="module")
def project(tmp_path_factory, twin_dir):
    """20 users prepared (stage 01), the twins linked into data/models."""
    root = tmp_path_factory.mktemp("cost")
    prepared_project(root, model_seed=0)
    for sub in (twin.VLM_DIR, twin.LM_DIR):
        (root / "data" / "models" / sub).symlink_to(twin_dir / sub)
    return root


@pytest.fixture(scope="module")
def twins(twin_dir):
    return models.load(twin_dir / twin.VLM_DIR, kind="vlm"), models.load(twin_dir / twin.LM_DIR, kind="lm")


@pytest.fixture(scope="module")
def table(project):
    params = load_params(project / "params.yaml", {"base.profile": "paper"})
    return cost.report(params, DATASET, cost.Assumptions(100, 150, cover=(1280, 720)), progress=False)


def test_counted_ids_equal_the_processors(twins, tmp_path):
    """encode_counted (no image processing) gives exactly the ids scoring.encode feeds the model."""
    vlm, _ = twins
    Image.new("RGB", (1280, 720)).save(tmp_path / "cover.png")
    for order in prompts.ORDERS:
        messages = prompts.recommendation_messages("Likes cats.", "A cat", kind="video", image_token="<image>",
                                                   order=order)
        prompt = recommender.chat_text(vlm.processor, messages)
        real = scoring.encode(vlm, prompt, tmp_path / "cover.png")
        counted = cost.encode_counted(vlm, [prompt], [1948], ["cover"])[0]
        assert list(counted.ids) == real.ids


def test_stand_ins_have_the_assumed_length_and_differ(twins):
    _, lm = twins
    texts = cost.stand_ins(lm.tokenizer, 5, 40)
    assert len(set(texts)) == 5
    assert all(38 <= len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 40 for t in texts)


def test_report_counts_each_stage(project, table, twins):
    vlm, lm = twins
    params = load_params(project / "params.yaml", {"base.profile": "paper"})
    a = artifacts(params, DATASET)
    items, train = pd.read_parquet(a["items"]), pd.read_parquet(a["train"])
    row = table.set_index(["stage", "kind"])
    # item summaries: one call per item, each with a 1,948-token cover, 100 new tokens (assumed)
    n_items = len(items)
    assert row.loc[("02 item summaries", "generated"), "tokens"] == 100 * n_items
    prompt = row.loc[("02 item summaries", "prompt"), "tokens"]
    assert 1948 * n_items < prompt < (1948 + 100) * n_items
    # user summaries: one call per distinct block state (blocks of 3 over 5 history items: 2 per user)
    n_users = pd.read_parquet(a["interactions"])["user_id"].nunique()
    assert row.loc[("03 user summaries", "prompt"), "calls or examples"] == 2 * n_users
    assert row.loc[("03 user summaries", "generated"), "tokens"] == 150 * 2 * n_users
    # fine-tuning: train rows x 2 examples x 4 epochs, each a cover + a 150-token preference + text
    seen = row.loc[("04 fine-tuning", "trained"), "calls or examples"]
    assert seen == len(train) * 2 * 4
    assert 1948 + 150 < row.loc[("04 fine-tuning", "trained"), "per call"] < 1948 + 150 + 150
    # scoring: image_first shares each cover among the pairs of its item; never more than one forward each
    naive = row.loc[("05 scoring, image_first prompts: one forward per candidate", "prompt"), "tokens"]
    shared = row.loc[("05 scoring, image_first prompts: shared prefix", "prompt"), "tokens"]
    assert shared <= naive


def test_hours_use_the_rate_of_each_kind(table):
    out = cost.with_hours(table, tokens_per_s=1000, generated_per_s=10)
    generated = out[out["kind"] == "generated"]
    np.testing.assert_allclose(generated["GPU hours"], (generated["tokens"] / 10 / 3600).round(2))
    prompt = out[out["kind"] == "prompt"]
    np.testing.assert_allclose(prompt["GPU hours"], (prompt["tokens"] / 1000 / 3600).round(2))


def test_cli_prints_the_table(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    cost.main(["--dataset", DATASET, "--tokens-per-s", "2000", "--cover", "1280x720",
               "--user-summary-tokens", "64"])
    out = capsys.readouterr().out
    assert "| 05 scoring, image_first prompts: shared prefix" in out and "total GPU hours" in out


def test_measured_rates_and_gpu_counts(project, table, monkeypatch, capsys):
    rates = cost.measured_rates(ROOT / "results" / "gpu" / "h200_paper_shape.json", "4bit")
    assert rates == {"tokens_per_s": 10.96 * 2227, "generated_per_s": 406.4, "trained_per_s": 7193, "gpu": "NVIDIA H200"}
    out = cost.with_hours(table, 1000, gpus=(1, 4))
    np.testing.assert_allclose(out["wall h, 4 GPUs"], (out["tokens"] / 1000 / 3600 / 4).round(2))
    with pytest.raises(ValueError, match="precision 'fp8'"):
        cost.measured_rates(ROOT / "results" / "gpu" / "h200_paper_shape.json", "fp8")
    monkeypatch.chdir(project)
    cost.main(["--dataset", DATASET, "--measured", str(ROOT / "results" / "gpu" / "h200_paper_shape.json"),
               "--gpus", "1,8", "--cover", "1280x720", "--user-summary-tokens", "64"])
    printed = capsys.readouterr().out
    assert "wall h, 8 GPUs" in printed and " h on 8 GPUs" in printed and "NVIDIA H200" in printed
