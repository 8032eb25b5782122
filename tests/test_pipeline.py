"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


def copy_repo(dest: Path) -> Path:
    """The repo as git sees it (tracked + untracked, not ignored), committed in a fresh git at `dest`."""
    files = sh("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-q", "-m", "copy", cwd=dest)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("repo"))


def test_dvc_repro_then_status_is_clean(repo):
    sh("dvc", "repro", cwd=repo)
    assert "up to date" in sh("dvc", "status", cwd=repo)
    for ds in yaml.safe_load((repo / "params.yaml").read_text())["base"]["datasets"]:
        metrics = json.loads((repo / "results" / ds / "data_prep.json").read_text())
        assert metrics["users"] > 0 and metrics["rows_test"] > 0
        assert (repo / "results" / ds / "notebooks" / "01_data_prep.ipynb").is_file()
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)  # a second run does nothing


def test_dvc_exp_run_with_a_param(repo):
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "repro", "--allow-empty", cwd=repo)
    # the data stage alone: enough to show -S reaches the notebook, without redoing every stage
    sh("dvc", "exp", "run", "data_prep", "-S", "data.kcore_user=9", cwd=repo)
    metrics = json.loads((repo / "results" / "microlens50k" / "data_prep.json").read_text())
    assert metrics["seq_len_min"] >= 9


def run_twin(repo: Path, quantization: str = "none") -> dict:
    """`profile: twin` (the paper's settings on the twin models, cut to 10 users) through DVC: stages
    01-05 and the tallrec ablation. Returns the stage metrics."""
    path = repo / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    tree["base"]["profile"] = "twin"
    tree["models"]["twin"]["quantization"] = quantization
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    ds = "microlens50k"
    sh("dvc", "repro", f"evaluation@{ds}", f"ablations@{ds}-tallrec", cwd=repo)
    assert "changed" not in sh("dvc", "status", f"evaluation@{ds}", f"ablations@{ds}-tallrec", cwd=repo)
    results = repo / "results" / ds
    out = {name: json.loads((results / f"{name}.json").read_text())
           for name in ("data_prep", "item_summaries", "user_summaries", "sft", "metrics")}
    out["tallrec"] = json.loads((results / "ablations" / "tallrec.json").read_text())
    return out | {"repo": repo}


@pytest.mark.timeout(1800)
def test_twin_profile_runs_the_paper_path_end_to_end(tmp_path_factory):
    m = run_twin(copy_repo(tmp_path_factory.mktemp("twin")))
    assert (m["data_prep"]["users"], m["data_prep"]["rows_test"]) == (10, 1)
    assert m["item_summaries"]["model"].startswith("data/models/twin-vlm@")
    assert m["item_summaries"]["placeholder_images_used"] == 12  # the cut: 12 items, each with its cover card
    assert m["user_summaries"]["model"].startswith("data/models/twin-lm@") and m["user_summaries"]["llm_calls"] == 20
    sft = m["sft"]
    assert sft["train_examples"] == 4 and sft["train_with_image"] == 4 and sft["train_too_long"] == 0
    assert sft["steps"] == 4  # 4 examples, batch 1 x grad_accum 4, 4 epochs: the paper's settings
    assert 1176 < sft["train_max_tokens"] <= 4096  # a 128 px card expands to 1,176 image tokens
    for variant in ("zero_shot", "fine_tuned"):
        assert m["metrics"][variant]["n_groups"] == 1 and m["metrics"][variant]["model"].startswith(
            "data/models/twin-vlm@")
    assert m["tallrec"]["scored"] == "fine_tuned" and m["tallrec"]["metrics"]["n_groups"] == 1
    assert "pipeline check (twin random model)" in (m["repo"] / "results" / "microlens50k" / "results.csv").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twin_profile_with_qlora_and_bf16_on_cuda(tmp_path_factory):
    m = run_twin(copy_repo(tmp_path_factory.mktemp("twin_gpu")), quantization="4bit")
    assert m["sft"]["quantization"] == "4bit" and m["sft"]["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert m["metrics"]["fine_tuned"]["n_groups"] == 1
