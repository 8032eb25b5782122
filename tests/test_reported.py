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
    mllm = table[(table["variant"] == "fine_tuned") & (table["metric"] == "auc") & (table["kind"] == "table")].set_index("dataset")["value"]
    assert mllm.to_dict() == {"microlens50k": 83.17, "amazon_baby": 84.39, "amazon_games": 85.69}
    assert set(table["dataset"]) <= set(DATASETS)


def test_paper_numbers_sit_beside_ours_on_the_same_variant(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,table,Table 2",
                 "amazon_baby,gru4rec,GRU4Rec,auc,70.5,table,Table 2", "amazon_baby,gru4rec,GRU4Rec,hr@5,40.1,table,Table 2",
                 "microlens50k,sasrec,SASRec,ndcg@3,20,table,Table 2")
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
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,table,Table 2",
                 "amazon_baby,tallrec,TALLRec,auc,71.0,table,Table 2")
    out = reported.side_by_side(ours(["zero_shot"]), "amazon_baby", path)
    extra = out[out["source"] == reported.SOURCE].set_index("variant")
    assert extra.index.tolist() == ["fine_tuned", "tallrec"]
    assert extra["paper_auc"].tolist() == [84.39, 71.0] and extra["auc"].isna().all()
    assert extra["model"].tolist() == ["MLLM-MSR", "TALLRec"]


@pytest.mark.parametrize("line, message", [
    ("amazon_baby,gru4rec,GRU4Rec,recall@5,40,table,T2", r"line 2: metric 'recall@5'"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,171,table,T2", r"line 2: value '171' is not a number from 0 to 100"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,n/a,table,T2", r"line 2: value 'n/a'"),
    ("amazon_toys,gru4rec,GRU4Rec,auc,71,table,T2", r"line 2: dataset 'amazon_toys' is not one of microlens50k"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,71,table,", r"line 2: empty where"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,71,slide,T2", r"line 2: kind 'slide' is not one of table, figure"),
    ("amazon_baby,gru4rec,GRU4Rec,auc,71,,T2", r"line 2: empty kind"),
    ("amazon_baby,llava,LLaVA,auc,52,table,T3", r"line 2: variant 'llava' is none of ours \(zero_shot, "),
    ("amazon_baby,dataset,stats,users,-3,table,T", r"line 2: value '-3' is not a number >= 0"),
    ("amazon_baby,dataset,stats,auc,50,table,T", r"line 2: metric 'auc' of variant 'dataset' is not one of users"),
    ("amazon_baby,block_point_2,MLLM-MSR,users,5,figure,F5", r"line 2: metric 'users' is not auc"),
])
def test_bad_entries_fail_naming_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path, line)
    with pytest.raises(ValueError, match=message) as error:
        reported.load(path)
    assert str(path) in str(error.value)


def test_a_number_given_twice_and_a_missing_column_are_errors(tmp_path):
    path = write(tmp_path, "amazon_baby,gru4rec,GRU4Rec,auc,71,table,T2", "amazon_baby,gru4rec,GRU4Rec,auc,71,figure,F4",
                 "amazon_baby,gru4rec,GRU4Rec,auc,72,table,T3")
    with pytest.raises(ValueError, match=r"amazon_baby / gru4rec / auc / table is given 2 times \(lines 2, 4\)"):
        reported.load(path)
    path.write_text("dataset,variant,metric,value\namazon_baby,gru4rec,auc,71\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) paper_row, kind, where"):
        reported.load(path)
    with pytest.raises(FileNotFoundError, match="nothing.csv not found"):
        reported.load(tmp_path / "nothing.csv")


def test_auc_bars_mark_the_paper_number_on_its_row(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,table,Table 2")
    table = reported.side_by_side(ours(), "amazon_baby", path)
    ax = plots.metric_bars(table, "auc").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero_shot", "fine_tuned", "gru4rec"]
    marks = ax.collections[-1].get_offsets()
    assert [tuple(p) for p in marks[~marks.mask.any(axis=1)]] == [(84.39, 1.0)]  # on fine_tuned's row


# --- the shipped file holds every number of PAPER_NUMBERS.md -----------------------------------------

NUMBERS = Path("/work/shared/PAPER_NUMBERS.md")
COLUMN_DATASETS = {"MicroLens": "microlens50k", "Amazon-Baby": "amazon_baby", "Amazon-Game": "amazon_games"}
ROWS = {"LLaVA (no fine-tuning)": "zero_shot", "TALLRec": "tallrec", "MLLM-MSR": "fine_tuned",
        "MLLM-MSR_R": "no_recurrence", "MLLM-MSR_I": "no_image_summary", "MLLM-MSR (full)": "fine_tuned",
        "image summary (LLaVA)": "gru4rec_summary", "VGG19 features": "gru4rec_image",
        "users": "users", "items": "items", "interactions": "interactions",
        "avg. sequence length (as printed)": "avg_seq_len"}


def markdown_numbers(text: str) -> set[tuple]:
    """(dataset, variant, metric, kind, value) of every number in PAPER_NUMBERS.md's tables but the
    settings table: metrics x 100, figure numbers marked ≈."""
    found, section = set(), ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or "Settings" in section or set(cells[1]) <= set("-") or cells[0] in (
                "row", "variant", "dataset", "input", ""):
            continue
        label = cells[0].split(" (")[0] if cells[0].startswith("MLLM-MSR_") else cells[0]
        values = [c for c in cells[1:]]
        kind = "figure" if values[0].startswith("≈") else "table"
        numbers = [float(v.lstrip("≈ ").replace(",", "")) for v in values]
        if "Table 3" in section:
            for i, ds in enumerate(COLUMN_DATASETS.values()):
                for j, metric in enumerate(("auc", "hr@5", "mrr@5")):
                    found.add((ds, ROWS[label], metric, kind, numbers[3 * i + j]))
        elif "Block size" in section:
            for p, x in enumerate(numbers, 1):
                found.add((COLUMN_DATASETS[label], f"block_point_{p}", "auc", kind, round(x * 100, 2)))
        elif "statistics" in section:
            for ds, x in zip(COLUMN_DATASETS.values(), numbers):
                found.add((ds, "dataset", ROWS[label], kind, x))
        else:  # Figure 4 and the GRU4Rec study: AUC as a fraction
            for ds, x in zip(COLUMN_DATASETS.values(), numbers):
                found.add((ds, ROWS[label], "auc", kind, round(x * 100, 2)))
    return found


def shipped_numbers() -> set[tuple]:
    table = reported.load(SHIPPED)
    return set(zip(table["dataset"], table["variant"], table["metric"], table["kind"], table["value"].round(2)))


def test_every_number_of_paper_numbers_md_is_in_the_shipped_file_and_nothing_else():
    if not NUMBERS.is_file():
        pytest.skip(f"{NUMBERS} not here: the pinned count and values below still run")
    assert markdown_numbers(NUMBERS.read_text()) == shipped_numbers()


def test_the_shipped_file_pins_69_numbers_with_their_kinds_and_sources():
    table = reported.load(SHIPPED)
    assert len(table) == 69 and table.groupby("kind").size().to_dict() == {"figure": 24, "table": 45}
    numbers = shipped_numbers()
    assert {("amazon_baby", "fine_tuned", "auc", "table", 84.39), ("amazon_games", "fine_tuned", "auc", "table", 85.69),
            ("amazon_baby", "fine_tuned", "mrr@5", "table", 63.25), ("microlens50k", "zero_shot", "hr@5", "table", 28.21),
            ("amazon_games", "no_image_summary", "auc", "figure", 80.3), ("microlens50k", "block_point_3", "auc", "figure", 83.2),
            ("amazon_baby", "gru4rec_image", "auc", "table", 73.83), ("amazon_games", "dataset", "interactions", "table", 352136),
            ("microlens50k", "dataset", "avg_seq_len", "table", 11.35)} <= numbers
    figure = table[table["kind"] == "figure"]
    assert figure["where"].str.contains(r"Figure [45] \(.*read off the figure, ± 0\.2").all()
    assert table[table["kind"] == "table"]["where"].str.contains("emanhthangngot/MLLM-MSR, slides/content/").all()
    assert not table["variant"].isin(["gru4rec", "sasrec", "pop"]).any()  # not given by any reachable copy: empty


# --- kinds: table before figure, ≈ in display ---------------------------------------------------------

def test_a_table_number_wins_over_the_figure_one_and_display_marks_figures(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.4,figure,Figure 4",
                 "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,table,Table 3",
                 "amazon_baby,no_recurrence,MLLM-MSR_R,auc,81.2,figure,Figure 4",
                 "amazon_baby,fine_tuned,MLLM-MSR,hr@5,77.42,table,Table 3")
    out = reported.side_by_side(ours(), "amazon_baby", path)
    rows = out.set_index("variant")
    assert rows.loc["fine_tuned", "paper_auc"] == 84.39 and rows.loc["no_recurrence", "paper_auc"] == 81.2
    shown = reported.display(out, "amazon_baby", path).set_index("variant")
    assert shown.loc["fine_tuned", ["paper_auc", "paper_hr@5"]].tolist() == ["84.39", "77.42"]
    assert shown.loc["no_recurrence", "paper_auc"] == "≈ 81.2"
    assert shown.loc["zero_shot", "paper_auc"] is None and shown.loc["no_recurrence", "paper_hr@5"] is None
    assert reported.display(out, "amazon_baby", path)["auc"].equals(out["auc"])  # ours untouched
    assert "≈" in reported.NOTE


def test_shipped_file_shows_the_table_values_for_the_full_method():
    out = reported.display(reported.side_by_side(ours(["fine_tuned"]), "microlens50k", SHIPPED), "microlens50k", SHIPPED)
    rows = out.set_index("variant")
    assert rows.loc["fine_tuned", ["paper_auc", "paper_hr@5", "paper_mrr@5"]].tolist() == ["83.17", "78.23", "60.38"]
    assert rows.loc["no_recurrence", "paper_auc"] == "≈ 80.8" and rows.loc["no_image_summary", "paper_auc"] == "≈ 78.6"
    assert rows.loc["gru4rec_summary", "paper_auc"] == "72.81" and rows.loc["tallrec", "paper_auc"] == "81.25"
    assert out["variant"].tolist() == ["fine_tuned", "zero_shot", "tallrec", "no_recurrence", "no_image_summary",
                                       "gru4rec_image", "gru4rec_summary"]


# --- numbers that match no row of ours ----------------------------------------------------------------

def test_block_points_and_dataset_stats_make_no_table_rows(tmp_path):
    path = write(tmp_path, "amazon_baby,fine_tuned,MLLM-MSR,auc,84.39,table,Table 3",
                 *[f"amazon_baby,block_point_{p},MLLM-MSR,auc,{80 + p},figure,Figure 5" for p in (3, 1, 2)],
                 "amazon_baby,dataset,dataset statistics,users,41081,table,slides",
                 "amazon_baby,dataset,dataset statistics,avg_seq_len,13.65,table,slides")
    out = reported.side_by_side(ours(["zero_shot"]), "amazon_baby", path)
    assert out["variant"].tolist() == ["zero_shot", "fine_tuned"]
    assert not any(c.endswith(("users", "avg_seq_len")) for c in out.columns)
    points = reported.block_points("amazon_baby", path)
    assert points.to_dict("list") == {"point": [1, 2, 3], "auc": [81.0, 82.0, 83.0], "kind": ["figure"] * 3}
    assert reported.block_points("microlens50k", path).empty


def test_shipped_block_points_peak_at_the_third():
    points = reported.block_points("amazon_games", SHIPPED)
    assert points["point"].tolist() == [1, 2, 3, 4, 5] and points["auc"].idxmax() == 2
    assert points["auc"].tolist() == [77.0, 82.2, 85.7, 84.6, 82.2]


def test_dataset_stats_put_ours_beside_the_papers_and_name_a_cut():
    prep = {"users": 300, "items": 2326, "interactions": 3032, "seq_len_mean": 10.1, "raw_users": 50000}
    stats = reported.dataset_stats("microlens50k", SHIPPED, {**prep, "source": "sample", "limit_users": 300})
    assert stats["stat"].tolist() == ["users", "items", "interactions", "avg_seq_len"]
    assert stats["paper"].tolist() == [25411, 20276, 223263, 11.35]
    assert stats["ours"].tolist() == [300, 2326, 3032, 10.1]
    assert stats["ours_scope"].str.contains("shipped sample.*first 300 users.*a cut").all()
    whole = reported.dataset_stats("amazon_baby", SHIPPED, {**prep, "source": "full", "limit_users": 0})
    assert (whole["ours_scope"] == "after k-core").all() and whole["paper"].tolist()[0] == 41081
