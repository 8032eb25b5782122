"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the repository."""

import json
import shutil

import nbformat
import pytest
import torch
import yaml

from tests.conftest import repo_copy, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # whole pipeline: minutes, not a unit test


def test_dvc_repro_then_status_is_clean(reproduced):
    assert "up to date" in sh("dvc", "status", cwd=reproduced)
    for ds in yaml.safe_load((reproduced / "params.yaml").read_text())["base"]["datasets"]:
        metrics = json.loads((reproduced / "results" / ds / "data_prep.json").read_text())
        assert metrics["users"] > 0 and metrics["rows_test"] > 0
        assert (reproduced / "results" / ds / "notebooks" / "01_data_prep.ipynb").is_file()
        sft = json.loads((reproduced / "results" / ds / "sft.json").read_text())
        assert sft["train_loss_last"] < 0.8 and sft["eval_loss"] < 0.8  # the answer format is learned
    assert "Running stage" not in sh("dvc", "repro", cwd=reproduced)  # a second run does nothing


def test_executed_notebooks_show_progress_bars_as_widgets(reproduced):
    """tqdm.auto draws widgets when ipywidgets is installed, else warns "IProgress not found"."""
    notebooks = sorted(reproduced.glob("results/*/notebooks/*.ipynb"))
    assert len(notebooks) == 6 * len(yaml.safe_load((reproduced / "params.yaml").read_text())["base"]["datasets"])
    widgets = 0
    for path in notebooks:
        outputs = [o for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", [])]
        assert "IProgress" not in json.dumps(outputs), f"{path.name}: tqdm could not draw a widget"
        widgets += sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert widgets > 0


def test_dvc_exp_run_with_a_param(reproduced, tmp_path):
    repo = shutil.copytree(reproduced, tmp_path / "repo", symlinks=True)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "repro", "--allow-empty", cwd=repo)
    # the data stage alone: enough to show -S reaches the notebook, without redoing every stage
    sh("dvc", "exp", "run", "data_prep", "-S", "data.kcore_user=9", cwd=repo)
    metrics = json.loads((repo / "results" / "microlens50k" / "data_prep.json").read_text())
    assert metrics["seq_len_min"] >= 9


def run_twin(repo, quantization: str = "none") -> dict:
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
    out["table"] = (results / "results.csv").read_text()
    return out


def test_twin_profile_runs_the_paper_path_end_to_end(tmp_path_factory):
    m = run_twin(repo_copy(tmp_path_factory.mktemp("twin")))
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
    assert "pipeline check (twin random model)" in m["table"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twin_profile_with_qlora_and_bf16_on_cuda(tmp_path_factory):
    m = run_twin(repo_copy(tmp_path_factory.mktemp("twin_gpu")), quantization="4bit")
    assert m["sft"]["quantization"] == "4bit" and m["sft"]["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert m["metrics"]["fine_tuned"]["n_groups"] == 1
