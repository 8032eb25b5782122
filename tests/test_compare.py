import pandas as pd
import pytest

from msr_utils import compare
from msr_utils.config import load_params
from tests.conftest import write_scores


def test_comparison_has_every_row_scaled_and_no_nan(project):
    params = load_params(project / "params.yaml")
    results = project / "results" / "microlens50k"
    m = write_scores(project, baselines=[("pop", 1), ("gru4rec", 3)])
    ours = pd.DataFrame({"dataset": "microlens50k", "variant": ["zero_shot", "fine_tuned"],
                         "source": "pipeline check", "profile": "tiny", "model": ["m", "m+lora"], "seed": [1, 1],
                         **{k: [round(100 * m[v][k], 2) for v in ("zero_shot", "fine_tuned")] for k in ("auc", "hr@5")},
                         "n_groups": [30, 30]})
    ours.to_csv(results / "results.csv", index=False)
    baselines = pd.DataFrame({"name": ["pop", "gru4rec"], **{k: [m[v][k] for v in ("pop", "gru4rec")] for k in ("auc", "hr@5")},
                              "n_groups": [30, 30], "n_rows": [630, 630], "seconds": [0.1, 3.0],
                              "n_seeds": [1, 3], "seeds": ["2024", "2024 2025 2026"]})
    out = compare.table(params, "microlens50k", baselines)
    ours = ["zero_shot", "fine_tuned", "pop", "gru4rec"]  # then the paper's rows we have none for (no ablation ran)
    assert out["variant"].tolist()[:4] == ours
    assert set(out["source"].iloc[4:]) == {"reported (paper)"} and "tallrec" in out["variant"].tolist()[4:]
    out = out.iloc[:4]
    assert out.loc[out["variant"] == "gru4rec", "auc"].item() == round(100 * m["gru4rec"]["auc"], 2)  # x 100
    assert not out[["auc", "auc_lo", "auc_hi", "hr@5", "seed", "n_groups"]].isna().any().any()
    assert (out["auc_lo"] <= out["auc"]).all() and (out["auc"] <= out["auc_hi"]).all()
    mine = out.set_index("variant")
    assert mine.loc["fine_tuned", ["auc", "paper_auc", "paper_row"]].tolist() == [
        round(100 * m["fine_tuned"]["auc"], 2), 83.17, "MLLM-MSR"]
    assert mine.loc["zero_shot", ["paper_row", "paper_auc"]].tolist() == ["LLaVA", 52.75]
    assert mine.loc[["pop", "gru4rec"], "paper_auc"].isna().all()  # no reachable copy gives these
    assert mine.loc["pop", "source"] == compare.BASELINE_SOURCE  # one run
    assert mine.loc["gru4rec", "source"].endswith("mean of 3 seeds (2024 2025 2026)")  # `seed` shows the first
    pairs = pd.read_csv(results / "paired.csv")
    assert pairs["versus"].tolist() == ["zero_shot", "pop", "gru4rec"] and set(pairs["variant"]) == {"fine_tuned"}
    assert pairs["diff_auc"].tolist() == [round(100 * (m["fine_tuned"]["auc"] - m[v]["auc"]), 2)
                                          for v in ("zero_shot", "pop", "gru4rec")]
    md = (results / "comparison.md").read_text()
    assert "| gru4rec" in md and "nan" not in md.lower() and "paper_auc" in md
    assert md.index("## AUC, HR@5, MRR@5") < md.index("## fine_tuned against every row") < md.index("## Every metric")


def test_a_stale_score_file_is_named(project):
    params = load_params(project / "params.yaml")
    m = write_scores(project)
    pd.DataFrame({"dataset": "microlens50k", "variant": ["zero_shot", "fine_tuned"], "source": "x", "profile": "tiny",
                  "model": "m", "seed": 1, "auc": [round(100 * m["zero_shot"]["auc"], 2), 99.0], "n_groups": 30}
                 ).to_csv(project / "results" / "microlens50k" / "results.csv", index=False)
    baselines = pd.DataFrame({"name": ["pop"], "auc": [m["pop"]["auc"]], "n_groups": [30]})
    with pytest.raises(ValueError, match="fine_tuned: AUC 99.0 in its results.*stale"):
        compare.table(params, "microlens50k", baselines)


@pytest.mark.parametrize(("missing", "says"), [
    (0, None),
    (3, "3 of 40 items have no item summary and enter as their title"),
    (40, "no item has an item summary: each enters as its title (gru4rec_title's input)"),
])
def test_a_summary_baseline_says_how_many_items_entered_as_their_title(missing, says):
    """The small profile's sample has no real image, so no item summary: gru4rec_summary then reads
    titles only and its row must say so (its numbers equal gru4rec_title's)."""
    row = {"name": "gru4rec_summary", "n_seeds": 3, "seeds": "2024 2025 2026"}
    source = compare.baseline_source(row, {"summary_missing": missing, "summary_items": 40})
    assert source.startswith(f"{compare.BASELINE_SOURCE}, mean of 3 seeds (2024 2025 2026)")
    assert source.endswith(says) if says else source == f"{compare.BASELINE_SOURCE}, mean of 3 seeds (2024 2025 2026)"
