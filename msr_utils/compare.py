"""Stage 06 report: our model, its zero-shot base, every baseline and the paper's reported numbers
in one table per dataset (metrics x 100)."""

from __future__ import annotations

import pandas as pd

from msr_utils.config import Params
from msr_utils.evaluate import markdown_rows, paths as eval_paths


def table(params: Params, dataset: str, baseline_table: pd.DataFrame) -> pd.DataFrame:
    """Rows: stage 05 variants (+ the paper's row), then the baselines; writes comparison csv/md."""
    ours = pd.read_csv(eval_paths(params, dataset)["table_csv"])
    metrics = [c for c in baseline_table.columns if c not in ("name", "n_groups", "n_rows", "seconds")]
    base = baseline_table.assign(**{m: (baseline_table[m] * 100).round(2) for m in metrics})
    base = base.rename(columns={"name": "variant"}).assign(
        dataset=dataset, source="baseline (same splits and candidates)", profile=params.base.profile,
        seed=params.base.seed)
    out = pd.concat([ours, base[[c for c in ours.columns if c in base.columns]]], ignore_index=True)
    out = out.astype({"seed": "Int64", "n_groups": "Int64"})
    path = params.root / "results" / dataset / "comparison.csv"
    out.to_csv(path, index=False)
    path.with_suffix(".md").write_text(f"# {dataset}: comparison (metrics x 100)\n\n"
                                       + markdown_rows(out) + "\n")
    return out
