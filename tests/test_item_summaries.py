"""Stage 02 as the notebook runs it: params -> items.parquet -> summaries parquet + metrics."""

import json

import pandas as pd
import pytest

from msr_utils import item_summaries, tiny
from msr_utils.config import load_params
from msr_utils.models import ModelLoadError
from tests.conftest import prepared_project


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A scratch project with a prepared 20-user sample and the tiny models."""
    root = tmp_path_factory.mktemp("proj")
    prepared_project(root, model_seed=1, item_summary={"limit": 12, "batch_size": 4, "max_new_tokens": 6})
    return root


def test_run_writes_summaries_and_metrics_then_reuses_cache(prepared):
    params = load_params(prepared / "params.yaml")
    out, stats = item_summaries.run(params, "microlens50k")
    paths = item_summaries.paths(params, "microlens50k")
    saved = pd.read_parquet(paths["item_summaries"])
    assert len(saved) == 12 and saved["summary"].str.len().gt(0).all()
    (model,) = set(saved["model"])  # the params string + weights fingerprint, not a resolved path
    assert model.startswith("data/models/tiny-vlm@")
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["generated"] == 12 and metrics["placeholder_images_used"] == 12
    _, again = item_summaries.run(params, "microlens50k")
    assert again["generated"] == 0 and again["cached"] == 12


def test_rebuilt_model_with_another_seed_does_not_reuse_the_cache(prepared, tmp_path):
    params = load_params(prepared / "params.yaml")
    item_summaries.run(params, "microlens50k")
    tiny.build(prepared / "data" / "models", seed=2)
    try:
        _, stats = item_summaries.run(params, "microlens50k")
        assert stats["generated"] == 12
    finally:
        tiny.build(prepared / "data" / "models", seed=1)


def test_placeholders_can_be_kept_out_of_the_image_path(prepared):
    params = load_params(prepared / "params.yaml", {"item_summary.placeholder_images": False})
    out, stats = item_summaries.run(params, "microlens50k")
    assert stats["title_only"] == 12 and stats["placeholder_images_used"] == 0


def test_shard_writes_only_the_cache(prepared, tmp_path):
    params = load_params(prepared / "params.yaml", {"item_summary.shard": "1/3",
                                                     "item_summary.max_new_tokens": 5})
    paths = item_summaries.paths(params, "microlens50k")
    before = paths["item_summaries"].stat().st_mtime_ns if paths["item_summaries"].exists() else None
    out, _ = item_summaries.run(params, "microlens50k")
    assert 0 < len(out) < 12
    assert (paths["item_summaries"].stat().st_mtime_ns if paths["item_summaries"].exists() else None) == before


def test_paper_profile_without_cuda_names_the_model(prepared):
    params = load_params(prepared / "params.yaml", {"base.profile": "paper"})
    with pytest.raises(ModelLoadError, match="llava-hf/llava-v1.6-mistral-7b-hf.*CUDA"):
        item_summaries.run(params, "microlens50k")


def test_bad_shard_param_is_named(prepared):
    from msr_utils.config import ConfigError
    with pytest.raises(ConfigError, match="item_summary.shard"):
        load_params(prepared / "params.yaml", {"item_summary.shard": "3/3"})
