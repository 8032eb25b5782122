"""The paper's reported numbers: the shipped file, its checks, and where they land in our tables."""

from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from msr_utils import plots, reported
from msr_utils.data.registry import DATASETS

matplotlib.use("Agg")
SHIPPED = Path(__file__).resolve().parents[1] / reported.FILE
HEADER = ",".join(reported.COLUMNS)


def ours(variants=("zero_shot", "fine_tuned", "gru4rec")):
    return pd.DataFrame({"dataset": "amazon_baby", "variant": list(variants), "source": "pipeline check",
                         "profile": "tiny", "model": "m", "seed": 1, "auc": 50.0, "hr@5": 10.0, "n_groups": 30})


def write(tmp_path, *lines):
    path = tmp_path / "reported.csv"
    path.write_text("\n".join((HEADER,) + lines) + "\n")
    return path


def test_shipped_file_is_valid_and_gives_mllm_msr_auc_for_every_dataset():
    table = reported.load(SHIPPED)
    mllm = table[(table["variant"] == "fine_tuned") & (table["metric"] == "auc")].set_index("dataset")["value"]
    assert mllm.to_dict() == {"microlens50k": 83.17, "amazon_baby": 84.39, "amazon_games": 85.69}
    assert set(table["dataset"]) <= set(DATASETS)


def test_paper_numbers_sit_beside_ours_on_the_same_variant(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,Table 2",
                 "amazon_baby,gru4rec,GRU4Rec,auc,70.5,Table 2", "amazon_baby,gru4rec,GRU4Rec,hr@5,40.1,Table 2",
                 "microlens50k,sasrec,SASRec,ndcg@3,20,Table 2")
    out = reported.side_by_side(ours(), "amazon_baby", path)
    assert list(out.columns) == ["dataset", "variant", "paper_row", "source", "profile", "model", "seed", "auc",
                                 "paper_auc", "hr@5", "paper_hr@5", "n_groups", "paper_ndcg@3"]
    rows = out.set_index("variant")
    assert rows.loc["gru4rec", ["paper_row", "paper_auc", "paper_hr@5"]].tolist() == ["GRU4Rec", 70.5, 40.1]
    assert rows.loc["fine_tuned", "paper_auc"] == 84.39 and pd.isna(rows.loc["fine_tuned", "paper_hr@5"])
    assert rows.loc["zero_shot", ["paper_row", "paper_auc"]].isna().all()
    assert out["paper_ndcg@3"].isna().all()  # another dataset's number stays out
    assert (out[["auc", "hr@5"]] == ours()[["auc", "hr@5"]]).all().all()  # ours untouched
    assert reported.side_by_side(out, "amazon_baby", path).equals(out)  # rerun on its own output


def test_a_reported_variant_we_did_not_run_gets_its_own_row(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,Table 2",
                 "amazon_baby,tallrec,TALLRec,auc,71.0,Table 2")
    out = reported.side_by_side(ours(["zero_shot"]), "amazon_baby", path)
    extra = out[out["source"] == reported.SOURCE].set_index("variant")
    assert extra.index.tolist() == ["fine_tuned", "tallrec"]
    assert extra["paper_auc"].tolist() == [84.39, 71.0] and extra["auc"].isna().all()
    assert extra["model"].tolist() == ["MLLM-MSR", "TALLRec"]


@pytest.mark.parametrize("line, message", [
    ("amazon_baby,gru4rec,GRU4Rec,recall@5,40,T2", r"line 2: metric 'recall@5'"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,171,T2", r"line 2: value '171' is not a number from 0 to 100"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,n/a,T2", r"line 2: value 'n/a'"),
    ("amazon_toys,gru4rec,GRU4Rec,auc,71,T2", r"line 2: dataset 'amazon_toys' is not one of microlens50k"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,71,", r"line 2: empty where"),
])
def test_bad_entries_fail_naming_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path, line)
    with pytest.raises(ValueError, match=message) as error:
        reported.load(path)
    assert str(path) in str(error.value)


def test_a_number_given_twice_and_a_missing_column_are_errors(tmp_path):
    path = write(tmp_path, "amazon_baby,gru4rec,GRU4Rec,auc,71,T2", "amazon_baby,gru4rec,GRU4Rec,auc,72,T3")
    with pytest.raises(ValueError, match=r"amazon_baby / gru4rec / auc is given 2 times \(lines 2, 3\)"):
        reported.load(path)
    path.write_text("dataset,variant,metric,value\namazon_baby,gru4rec,auc,71\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) paper_row, where"):
        reported.load(path)
    with pytest.raises(FileNotFoundError, match="nothing.csv not found"):
        reported.load(tmp_path / "nothing.csv")


def test_auc_bars_mark_the_paper_number_on_its_row(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,Table 2")
    table = reported.side_by_side(ours(), "amazon_baby", path)
    ax = plots.metric_bars(table, "auc").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero_shot", "fine_tuned", "gru4rec"]
    marks = ax.collections[-1].get_offsets()
    assert [tuple(p) for p in marks[~marks.mask.any(axis=1)]] == [(84.39, 1.0)]  # on fine_tuned's row
