import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from msr_utils import cache

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def project(tmp_path) -> Path:
    """A scratch project root: params.yaml (defaults) + a link to the shipped sample."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample").symlink_to(SAMPLE)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def set_params(project: Path, **sections) -> Path:
    """Update sections of the scratch project's params.yaml; returns its path."""
    path = project / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def count_generate(monkeypatch, loaded, fail_after=None):
    """Record the batch size of every generate() call; optionally raise on call fail_after + 1."""
    calls, real = [], type(loaded.model).generate.__get__(loaded.model)  # unwrapped

    def wrapper(**kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("injected crash")
        calls.append(kwargs["input_ids"].shape[0])
        return real(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", wrapper)
    return calls


def shard_keys(cache_dir):
    """Every key written to any shard, duplicates included."""
    return [k for p in cache.ShardCache(cache_dir).shards() for k in pd.read_parquet(p)[cache.KEY]]
