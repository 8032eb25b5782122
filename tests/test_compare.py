import pandas as pd

from msr_utils import compare
from msr_utils.config import load_params


def test_comparison_has_every_row_scaled_and_no_nan(project):
    params = load_params(project / "params.yaml")
    results = project / "results" / "microlens50k"
    results.mkdir(parents=True)
    ours = pd.DataFrame({"dataset": "microlens50k", "variant": ["zero_shot", "fine_tuned"],
                         "source": "pipeline check", "profile": "tiny", "model": ["m", "m+lora"],
                         "seed": [1, 1], "auc": [55.0, 60.0], "hr@5": [20.0, 30.0], "n_groups": [30, 30]})
    ours.to_csv(results / "results.csv", index=False)
    baselines = pd.DataFrame({"name": ["pop", "gru4rec"], "auc": [0.6, 0.7], "hr@5": [0.2, 0.5],
                              "n_groups": [30, 30], "n_rows": [630, 630], "seconds": [0.1, 3.0],
                              "n_seeds": [1, 3], "seeds": ["2024", "2024 2025 2026"]})
    out = compare.table(params, "microlens50k", baselines)
    assert out["variant"].tolist() == ["zero_shot", "fine_tuned", "pop", "gru4rec"]
    assert out.loc[out["variant"] == "gru4rec", "auc"].item() == 70.0  # x 100 like stage 05
    assert not out[["auc", "hr@5", "seed", "n_groups"]].isna().any().any()
    mine = out.set_index("variant")
    assert mine.loc["fine_tuned", ["auc", "paper_auc", "paper_row"]].tolist() == [60.0, 83.17, "MLLM-MSR"]
    assert mine.loc[["zero_shot", "pop", "gru4rec"], "paper_auc"].isna().all()  # the paper gives none here
    assert mine.loc["pop", "source"] == compare.BASELINE_SOURCE  # one run
    assert mine.loc["gru4rec", "source"].endswith("mean of 3 seeds (2024 2025 2026)")  # `seed` shows the first
    md = (results / "comparison.md").read_text()
    assert "| gru4rec" in md and "nan" not in md.lower() and "paper_auc" in md
