import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2+ test processes: one torch thread each, and
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # in what they start (2 threads on a busy 2-core box: 2-200x slower)

import pandas as pd
import pytest
import yaml

from msr_utils import cache

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BIN = Path(sys.executable).parent  # the venv running the tests: dvc, papermill, jupyter
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}


def sh(*cmd, cwd) -> str:
    """Run a command with the venv first on PATH; its stdout, or a failed assertion showing the end
    of both outputs."""
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def params_text(profile: str = "tiny") -> str:
    """params.yaml with base.profile set to `profile`: the tests' pipeline check runs the tiny profile
    (the shipped default, small, takes 45 minutes)."""
    text, n = re.subn(r"(?m)^(  profile: )\w+", rf"\g<1>{profile}", (ROOT / "params.yaml").read_text(), count=1)
    assert n == 1, "params.yaml has no base.profile line"
    return text


def repo_copy(dest: Path) -> Path:
    """The repo as git sees it (tracked + untracked, not ignored), on the tiny profile (params_text),
    committed in a fresh git at `dest`."""
    files = sh("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / "params.yaml").write_text(params_text())
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-q", "-m", "copy", cwd=dest)
    return dest


REPRO_FILES = ("test_pipeline.py", "test_readme.py")  # the tests on the shared `reproduced` repo


def pytest_xdist_make_scheduler(config, log):
    """`pytest -n N --dist loadfile` (`make test`): each test file runs on one worker, and the two
    files on the shared `reproduced` repo on the same one, so its `dvc repro` runs once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedRepro(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return REPRO_FILES[0] if Path(file).name in REPRO_FILES else file

    return SharedRepro(config, log)


def pytest_collection_modifyitems(items):
    """The shared-repo files first: the longest part of the suite (minutes of `dvc repro`), so with
    xdist its worker starts at once and the others share the rest."""
    items.sort(key=lambda item: item.path.name not in REPRO_FILES)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> Path:
    """A repo copy after `dvc repro` (what `make repro` leaves), built once per session: minutes.
    Read only; a test that changes it works on a copy (shutil.copytree(..., symlinks=True))."""
    repo = repo_copy(tmp_path_factory.mktemp("repo"))
    sh("dvc", "repro", cwd=repo)
    return repo


def new_project(root: Path) -> Path:
    """A scratch project root: params.yaml (defaults, tiny profile), a link to the shipped sample and the
    paper's reported numbers."""
    (root / "data").mkdir()
    (root / "data" / "sample").symlink_to(SAMPLE)
    shutil.copy(ROOT / "data" / "paper_reported.csv", root / "data")
    (root / "params.yaml").write_text(params_text())
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


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory):
    """The twin LM and VLM (seed 0), built once per test session (the tokenizers take seconds)."""
    from msr_utils import twin

    out = tmp_path_factory.mktemp("twins")
    twin.build(out, seed=0)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the tiny
    models gain nothing from more, and on a busy 2-core box two threads made them 4-20x slower."""
    from msr_utils.threads import torch_threads

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


def sft_project(root: Path, **sections) -> Path:
    """prepared_project plus fixed item summaries and user preferences (stand-ins for stages 02 and 03):
    what stage 04 and later read."""
    import pandas as pd

    from msr_utils import sft
    from msr_utils.config import load_params
    from msr_utils.data.schema import ITEM

    result = prepared_project(root, model_seed=1, **sections)
    p = sft.paths(load_params(root / "params.yaml"), "microlens50k")
    p["preferences"].parent.mkdir(parents=True)
    pd.concat([part[["user_id", "target_pos"]].assign(split=name, preference=SFT_PREFERENCE)
               for name, part in result.splits.items()]).to_parquet(p["preferences"])
    result.items[[ITEM]].assign(summary=SFT_SUMMARY).to_parquet(p["item_summaries"])
    return root


SFT_PREFERENCE = "The user appears to have a preference for short funny videos about games."
SFT_SUMMARY = "a bright cover with large white text"


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


def fake_scores(n_groups: int = 30, size: int = 21, seed: int = 0, signal: float = 0.3) -> pd.DataFrame:
    """Candidate scores of n test rows (user u<i>, target position 7; the first candidate positive)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    label = np.tile(np.r_[1, np.zeros(size - 1, int)], n_groups)
    return pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(n_groups)], size), "target_pos": 7,
                         "item_id": [f"i{j}" for j in range(n_groups * size)], "label": label,
                         "score": rng.random(n_groups * size) + signal * label})


def write_scores(project: Path, dataset: str = "microlens50k", baselines=(("pop", 1),), ablations=(),
                 n_groups: int = 30) -> dict[str, dict]:
    """The score files stage 06 reads, made up: stage 05's (zero_shot, fine_tuned), each baseline's
    (name, number of seeds) and each ablation's (in its scratch root). Returns each row's metrics
    (fractions; a baseline's: the mean over its seeds), for the result files that go with them."""
    from msr_utils import metrics

    def of(scores):
        table = scores.assign(g=scores["user_id"] + "@" + scores["target_pos"].astype(str))
        return metrics.evaluate(table, (1, 5, 10), "g")

    results = project / "results" / dataset
    results.mkdir(parents=True, exist_ok=True)
    pd.concat([fake_scores(n_groups, seed=s).assign(split="test", variant=v)
               for s, v in enumerate(("zero_shot", "fine_tuned"))]).to_parquet(results / "scores.parquet")
    parts = [fake_scores(n_groups, seed=10 + i + s).assign(name=name, seed=2024 + s)
             for i, (name, seeds) in enumerate(baselines) for s in range(seeds)]
    (pd.concat(parts).assign(row_key=lambda d: d["user_id"] + "@" + d["target_pos"].astype(str))
     .to_parquet(results / "baseline_scores.parquet"))
    for i, name in enumerate(ablations):
        folder = project / "data" / "ablations" / dataset / name / "results" / dataset
        folder.mkdir(parents=True, exist_ok=True)
        fake_scores(n_groups, seed=20 + i).assign(split="test", variant="fine_tuned").to_parquet(folder / "scores.parquet")
    out = {v: of(fake_scores(n_groups, seed=s)) for s, v in enumerate(("zero_shot", "fine_tuned"))}
    for i, (name, seeds) in enumerate(baselines):
        runs = pd.DataFrame([of(fake_scores(n_groups, seed=10 + i + s)) for s in range(seeds)])
        out[name] = runs.mean().to_dict()
    return out | {name: of(fake_scores(n_groups, seed=20 + i)) for i, name in enumerate(ablations)}
