"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the repository."""

import json
import shutil

import nbformat
import pytest
import yaml

from tests.conftest import sh

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
