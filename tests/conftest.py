import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from msr_utils import cache

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def new_project(root: Path) -> Path:
    """A scratch project root: params.yaml (defaults), a link to the shipped sample and the paper's
    reported numbers."""
    (root / "data").mkdir()
    (root / "data" / "sample").symlink_to(SAMPLE)
    shutil.copy(ROOT / "data" / "paper_reported.csv", root / "data")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture
def project(tmp_path) -> Path:
    return new_project(tmp_path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny LM and VLM (seed 0), built once per test module."""
    from msr_utils import tiny

    out = tmp_path_factory.mktemp("models")
    tiny.build(out, seed=0)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the tiny
    models gain nothing from more, and on a busy 2-core box two threads made them 4-20x slower."""
    from msr_utils.baselines.train import torch_threads

    with torch_threads(1):
        yield


def prepared_project(root: Path, model_seed: int, **sections):
    """A scratch project with the tiny models and stage 01 run on the first 20 users of the sample;
    `sections` update params.yaml first. Returns stage 01's result."""
    from msr_utils import tiny
    from msr_utils.config import load_params
    from msr_utils.data import prepare

    new_project(root)
    set_params(root, data={"limit_users": 20}, **sections)
    tiny.build(root / "data" / "models", seed=model_seed)
    return prepare.run(load_params(root / "params.yaml"), "microlens50k")


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
