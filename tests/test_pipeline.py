"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # whole pipeline: minutes, not a unit test
BIN = Path(sys.executable).parent


def sh(*cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The repo as git sees it (tracked + untracked, not ignored), committed in a fresh git."""
    dest = tmp_path_factory.mktemp("repo")
    files = sh("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-q", "-m", "copy", cwd=dest)
    return dest


def test_dvc_repro_then_status_is_clean(repo):
    sh("dvc", "repro", cwd=repo)
    assert "up to date" in sh("dvc", "status", cwd=repo)
    for ds in yaml.safe_load((repo / "params.yaml").read_text())["base"]["datasets"]:
        metrics = json.loads((repo / "results" / ds / "data_prep.json").read_text())
        assert metrics["users"] > 0 and metrics["rows_test"] > 0
        assert (repo / "results" / ds / "notebooks" / "01_data_prep.ipynb").is_file()
        sft = json.loads((repo / "results" / ds / "sft.json").read_text())
        assert sft["train_loss_last"] < 0.8 and sft["eval_loss"] < 0.8  # the answer format is learned
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)  # a second run does nothing


def test_dvc_exp_run_with_a_param(repo):
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "repro", "--allow-empty", cwd=repo)
    # the data stage alone: enough to show -S reaches the notebook, without redoing every stage
    sh("dvc", "exp", "run", "data_prep", "-S", "data.kcore_user=9", cwd=repo)
    metrics = json.loads((repo / "results" / "microlens50k" / "data_prep.json").read_text())
    assert metrics["seq_len_min"] >= 9
