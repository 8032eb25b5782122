"""Stage 01 on the real shipped sample (first users only, so it stays fast)."""

import hashlib
import json

import pandas as pd
import pytest
from PIL import Image

from msr_utils.config import ConfigError, load_params
from msr_utils.data import prepare
from tests.conftest import set_params


def _run(project, **data):
    params = load_params(set_params(project, data={"limit_users": 60, **data}))
    return params, prepare.run(params, "microlens50k")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_same_seed_same_bytes(project, protocol):
    params, _ = _run(project, protocol=protocol)
    out = params.path("data/processed/microlens50k")
    first = _digests(out)
    _run(project, protocol=protocol)
    assert _digests(out) == first and len(first) == 5


def test_outputs_schema_metrics_and_placeholders(project):
    params, result = _run(project)
    out = params.path("data/processed/microlens50k")
    items = pd.read_parquet(out / "items.parquet")
    inter = pd.read_parquet(out / "interactions.parquet")
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert inter["timestamp"].dtype == "int64" and inter["user_id"].nunique() == 60
    assert set(items["item_id"]) == set(inter["item_id"])
    # no cover ships with the sample: every image is a placeholder, marked and counted
    assert items["image_placeholder"].all()
    img = Image.open(params.path(items["image_path"].iloc[0]))
    assert img.size == (128, 128)
    metrics = json.loads(params.path("results/microlens50k/data_prep.json").read_text())
    assert metrics["images_placeholder"] == len(items) and metrics["images_real"] == 0
    assert metrics["users"] == 60 and metrics["seq_len_min"] >= 7  # paper k-core for MicroLens
    info = json.loads((out / "dataset.json").read_text())
    assert info["timestamp_unit"] == "order" and info["kcore_user"] == 7 and info["noun"] == "video"
    test = pd.read_parquet(out / "test.parquet")
    assert test["candidates"].map(len).eq(21).all()
    assert (test["history"].map(len) == 5).all()  # paper protocol: 6 items per user


def test_kcore_override_changes_output(project):
    _, a = _run(project, kcore_user=10)
    assert a.metrics["seq_len_min"] >= 10 and a.info["kcore_user"] == 10


def test_no_sample_for_amazon_is_a_clear_error(project):
    params = load_params(project / "params.yaml")
    with pytest.raises(ConfigError, match="no sample ships for 'amazon_baby'"):
        prepare.run(params, "amazon_baby")


def test_full_source_without_files_names_folder(project):
    params = load_params(set_params(project, data={"source": "full"}))
    with pytest.raises(Exception, match="data/raw/amazon_games"):
        prepare.run(params, "amazon_games")
