"""Stage 06 report: our model, its zero-shot base, every baseline, every ablation variant and the
paper's reported numbers in one table per dataset (metrics x 100); the block-size sweep."""

from __future__ import annotations

import json

import pandas as pd

from msr_utils.config import Params
from msr_utils import reported
from msr_utils.evaluate import markdown_rows, metric_keys, paths as eval_paths, table_row

ABLATION_SOURCE, BASELINE_SOURCE = "ablation (params)", "baseline (same splits and candidates)"


def table(params: Params, dataset: str, baseline_table: pd.DataFrame) -> pd.DataFrame:
    """Rows: stage 05 variants, the baselines, the ablations; the paper's numbers beside the same
    variant (reported.py); writes comparison csv/md."""
    p = eval_paths(params, dataset)
    ours = pd.read_csv(p["table_csv"])
    keys = metric_keys(params)
    base = pd.DataFrame([table_row(dataset, r["name"], baseline_source(r), params.base.profile, params.base.seed, r, keys)
                         for r in baseline_table.to_dict("records")], columns=ours.columns)
    ablation = ablation_rows(params, dataset, list(ours.columns))
    parts = [ours, base] + ([ablation] if len(ablation) else [])
    out = reported.side_by_side(pd.concat(parts, ignore_index=True), dataset, p["reported"])
    out = out.astype({"seed": "Int64", "n_groups": "Int64"})
    out.to_csv(p["comparison_csv"], index=False)
    p["comparison_md"].write_text(f"# {dataset}: comparison (metrics x 100)\n\n{reported.NOTE}\n\n"
                                       + markdown_rows(out) + "\n")
    return out


def baseline_source(row: dict) -> str:
    """A baseline row's source: its metrics are the mean over its seeds (`seed` shows the first)."""
    n = int(row.get("n_seeds", 1))
    return BASELINE_SOURCE if n == 1 else f"{BASELINE_SOURCE}, mean of {n} seeds ({row['seeds']})"


def brief(table: pd.DataFrame, metrics: tuple[str, ...] = ("auc", "gauc", "hr@5", "ndcg@5", "hr@10")) -> pd.DataFrame:
    """The columns a reader looks at first: variant, source, each metric and the paper's beside it."""
    wanted = ["variant", reported.PAPER_ROW, "source"] + [c for m in metrics for c in (m, reported.PREFIX + m)]
    return table[[c for c in wanted if c in table.columns]]


def ablation_results(params: Params, dataset: str) -> dict[str, dict]:
    """{variant: results/<dataset>/ablations/<variant>.json} for the variants of params that have one."""
    folder = params.root / "results" / dataset / "ablations"
    return {name: json.loads((folder / f"{name}.json").read_text())
            for name in params.ablations.variants if (folder / f"{name}.json").is_file()}


def ablation_rows(params: Params, dataset: str, columns: list[str]) -> pd.DataFrame:
    """One row per ablation variant with a result (metrics x 100), in `columns`."""
    rows = [table_row(dataset, name, ABLATION_SOURCE, r["profile"], r["seed"], r["metrics"], metric_keys(params))
            for name, r in ablation_results(params, dataset).items()]
    return pd.DataFrame(rows, columns=columns)


def block_label(size: int) -> str:
    return "all" if size == 0 else str(size)


def block_sweep(params: Params, dataset: str, table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """The block-size sweep: one row per block size (block_size "1" .. "all", order, variant, metric)
    from the ablation variants that change only user_summary.block_size. The main fine-tuned row is
    left out: it trains on all rows, the variants on `ablations.limit`, so only they compare."""
    points = []
    for name, r in ablation_results(params, dataset).items():
        if set(r["overrides"]) == {"user_summary.block_size"}:
            row = table[(table["variant"] == name) & (table["source"] == ABLATION_SOURCE)]
            points.append((r["overrides"]["user_summary.block_size"], name, row[metric].iloc[0]))
    out = pd.DataFrame(points, columns=["size", "variant", metric]).drop_duplicates("size")
    out = out.assign(order=out["size"].replace(0, 10**9)).sort_values("order", kind="stable")
    return pd.DataFrame({"block_size": out["size"].map(block_label), "order": range(len(out)),
                         "variant": out["variant"], metric: out[metric]}).reset_index(drop=True)
