"""`make results` (msr_utils.results): each dataset's tables as written, labelled check or result."""

import pandas as pd
import pytest

from msr_utils import results
from tests.conftest import set_params

DATASETS = ["microlens50k", "amazon_baby"]


def write_tables(project, dataset, profile, comparison=True):
    folder = project / "results" / dataset
    folder.mkdir(parents=True)
    (folder / "results.md").write_text(f"# {dataset}: test results\n\n| variant | auc |\n| zero_shot | 51.2 |\n")
    pd.DataFrame({"dataset": [dataset], "variant": ["zero_shot"], "profile": [profile]}).to_csv(
        folder / "results.csv", index=False)
    if comparison:
        (folder / "comparison.md").write_text(f"# {dataset}: comparison\n\n| variant | auc |\n| pop | 60.1 |\n")


def test_prints_every_dataset_in_params_order_under_its_label(project, capsys):
    params = set_params(project, base={"datasets": DATASETS})
    write_tables(project, "microlens50k", "tiny")
    write_tables(project, "amazon_baby", "paper")
    results.main(["--params", str(params)])
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("==> ")]
    assert heads == ["==> microlens50k (profile tiny): PIPELINE CHECK: random weights, the numbers check the "
                     "pipeline and are not results", "==> amazon_baby (profile paper): RESULT"]
    for dataset in DATASETS:  # each file verbatim, after its dataset's header
        for name in ("results.md", "comparison.md"):
            text = (project / "results" / dataset / name).read_text().rstrip()
            assert f"--- results/{dataset}/{name}\n\n{text}" in out
            assert out.index(text) > out.index(f"==> {dataset}")
    assert out.index("==> amazon_baby") > out.index("| pop | 60.1 |")


def test_missing_table_exits_naming_the_file_and_the_stage(project):
    params = set_params(project, base={"datasets": DATASETS[:1]})
    write_tables(project, "microlens50k", "tiny", comparison=False)
    with pytest.raises(SystemExit) as failed:
        results.main(["--params", str(params)])
    message = str(failed.value.code)
    assert "results/microlens50k/comparison.md not found" in message
    assert "stage 06 (baselines" in message and "dvc repro" in message
