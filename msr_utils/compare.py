"""Stage 06 report: our model, its zero-shot base, every baseline, every ablation variant and the
paper's reported numbers in one table per dataset (metrics x 100, each with its 95% interval), the
fine-tuned row paired against every other row on the same test groups; the block-size sweep.

Reads the candidate scores of every row: stage 05's results/<ds>/scores.parquet, stage 06's
baseline_scores.parquet and each ablation's scores in its scratch root (data/ablations/<ds>/<variant>).
Writes results/<ds>/comparison.csv / .md and paired.csv (msr_utils/intervals.py, tables.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from msr_utils import evaluate, intervals, reported, tables
from msr_utils.baselines import run as baselines_run
from msr_utils.baselines.common import GROUP
from msr_utils.config import Params
from msr_utils.evaluate import metric_keys, paths as eval_paths, table_row
from msr_utils.paths import require

ABLATION_SOURCE, BASELINE_SOURCE = "ablation (params)", "baseline (same splits and candidates)"
STAGE_05 = "stage 05 (evaluation: `dvc repro evaluation`)"
STAGE_06 = "stage 06's baselines.run (notebook 06)"
STAGE_ABL = "the ablations stage (`dvc repro ablations`)"
REFERENCE = "block_3"  # the full method under the ablations' limits: what the other ablations compare with


def table(params: Params, dataset: str, baseline_table: pd.DataFrame) -> pd.DataFrame:
    """Rows: stage 05 variants, the baselines, the ablations, each metric with its interval; the
    paper's numbers beside the same variant (reported.py); fine_tuned paired against every other row
    (and each ablation against block_3). Writes comparison csv/md and paired.csv."""
    p = eval_paths(params, dataset)
    keys = metric_keys(params)
    rows = scored_rows(params, dataset, baseline_table)
    ours = pd.read_csv(require(p["table_csv"], STAGE_05))  # its intervals again from the scores: the same seed
    ours = pd.DataFrame([{k: v for k, v in r.items() if not k.endswith((intervals.LO, intervals.HI))}
                         | evaluate.interval_columns(params, rows[r["variant"]]) for r in ours.to_dict("records")])
    about = baseline_about(params, dataset)
    base = pd.DataFrame([table_row(dataset, r["name"], baseline_source(r, about.get(r["name"])), params.base.profile,
                                   params.base.seed, r, keys)
                         | evaluate.interval_columns(params, rows[r["name"]]) for r in baseline_table.to_dict("records")])
    ablation = ablation_rows(params, dataset, rows)
    parts = [ours, base] + ([ablation] if len(ablation) else [])
    check_agree(pd.concat(parts, ignore_index=True), rows)
    out = reported.side_by_side(pd.concat(parts, ignore_index=True), dataset, p["reported"])
    out = tables.arrange(out, keys).astype({"seed": "Int64", "n_groups": "Int64"})
    pairs = paired(params, rows)
    out.to_csv(p["comparison_csv"], index=False)
    pairs.to_csv(p["paired_csv"], index=False)
    p["comparison_md"].write_text(markdown(params, dataset, out, pairs))
    return out


def scored_rows(params: Params, dataset: str, baseline_table: pd.DataFrame) -> dict[str, intervals.Scored]:
    """Every row's candidate scores as intervals.Scored: stage 05's variants, each baseline (its
    seeds), each ablation with a result."""
    p = eval_paths(params, dataset)
    scores = pd.read_parquet(require(p["scores"], STAGE_05))
    rows = evaluate.scored_rows(params, scores)
    base = pd.read_parquet(require(baselines_run.paths(params, dataset)["scores"], STAGE_06))
    for name in baseline_table["name"]:
        part = base[base["name"] == name]
        if part.empty:
            raise ValueError(f"{baselines_run.paths(params, dataset)['scores']} has no scores of {name!r}: rerun "
                             f"{STAGE_06}")
        rows[name] = intervals.scored(name, part, params.eval.ks, GROUP, seed_col="seed")
    for name, result in ablation_results(params, dataset).items():
        path = require(ablation_scores(params, dataset, name), STAGE_ABL)
        part = pd.read_parquet(path)
        row = evaluate.scored_rows(params, part[part[evaluate.VARIANT] == result["scored"]])[result["scored"]]
        rows[name] = dataclasses.replace(row, name=name)
    return rows


def check_agree(table: pd.DataFrame, rows: dict[str, intervals.Scored]) -> None:
    """Fail where a row's AUC in its result file and the AUC of its score file differ (a stale file)."""
    for variant, auc in zip(table["variant"], table["auc"]):
        if abs(100 * rows[variant].point("auc") - auc) > 0.006:
            raise ValueError(f"{variant}: AUC {auc} in its results, {100 * rows[variant].point('auc'):.2f} from its "
                             "scores: a score file is stale; rerun the stage that wrote both (`dvc repro`)")


def ablation_scores(params: Params, dataset: str, variant: str) -> Path:
    """Where an ablation variant's stage 05 wrote its scores (its scratch project)."""
    return params.path("data/ablations") / dataset / variant / "results" / dataset / "scores.parquet"


def paired(params: Params, rows: dict[str, intervals.Scored]) -> pd.DataFrame:
    """fine_tuned against every other row; each ablation against block_3 (same limits) where both ran."""
    if evaluate.FINE_TUNED not in rows:
        return pd.DataFrame()
    main = rows[evaluate.FINE_TUNED]
    out = [evaluate.paired_table(params, main, [r for n, r in rows.items() if n != evaluate.FINE_TUNED])]
    ablations = [r for n, r in rows.items() if n in params.ablations.variants and n != REFERENCE]
    if REFERENCE in rows and ablations:
        out.append(evaluate.paired_table(params, rows[REFERENCE], ablations))
    return pd.concat(out, ignore_index=True)


def markdown(params: Params, dataset: str, table: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """comparison.md: the paper's metrics with intervals, the paired differences, every metric."""
    shown = reported.display(table, dataset, eval_paths(params, dataset)["reported"])
    keys = evaluate.paired_keys(params)
    parts = [f"# {dataset}: comparison (metrics x 100)", f"{reported.NOTE} {tables.INTERVAL_NOTE}",
             "## AUC, HR@5, MRR@5 (the paper's metrics)", tables.markdown_rows(tables.lead(shown))]
    if len(pairs):
        main = pairs[pairs["variant"] == evaluate.FINE_TUNED]
        parts += ["## fine_tuned against every row, paired", tables.PAIRED_NOTE,
                  tables.markdown_rows(tables.paired_cells(main, keys))]
        rest = pairs[pairs["variant"] != evaluate.FINE_TUNED]
        if len(rest):
            parts += [f"## Ablations against {REFERENCE}, paired",
                      f"The ablations train on the first `ablations.limit` rows, the main fine_tuned row on all: "
                      f"within the ablations, {REFERENCE} (the paper's block size) is the full method under the same "
                      f"limits. Δ = {REFERENCE} − the row, as above.",
                      tables.markdown_rows(tables.paired_cells(rest, keys))]
    parts += ["## Every metric", tables.markdown_rows(tables.with_interval(shown, metric_keys(params)))]
    return "\n\n".join(parts) + "\n"


def baseline_about(params: Params, dataset: str) -> dict[str, dict]:
    """{baseline: what stage 06 recorded of its inputs} from baselines.json ({} before stage 06 wrote it)."""
    path = baselines_run.paths(params, dataset)["metrics"]
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def baseline_source(row: dict, about: dict | None = None) -> str:
    """A baseline row's source: its metrics are the mean over its seeds (`seed` shows the first), and
    for gru4rec_summary how many items had no item summary and entered as their title (`about`: its
    baselines.json entry)."""
    n = int(row.get("n_seeds", 1))
    text = BASELINE_SOURCE if n == 1 else f"{BASELINE_SOURCE}, mean of {n} seeds ({row['seeds']})"
    missing, items = (about or {}).get("summary_missing", 0), (about or {}).get("summary_items", 0)
    if missing and missing == items:
        return f"{text}; no item has an item summary: each enters as its title (gru4rec_title's input)"
    if missing:
        return f"{text}; {missing:,} of {items:,} items have no item summary and enter as their title"
    return text


def brief(table: pd.DataFrame, metrics: tuple[str, ...] = ("auc", "hr@5", "mrr@5", "gauc", "ndcg@5")) -> pd.DataFrame:
    """The columns a reader looks at first: variant, source, each metric with its interval and the
    paper's number beside it."""
    wanted = ["variant", reported.PAPER_ROW, "source"] + [
        c for m in metrics for c in (m, m + intervals.LO, m + intervals.HI, reported.PREFIX + m)]
    return table[[c for c in wanted if c in table.columns]]


def paired_cells(params: Params, dataset: str) -> pd.DataFrame:
    """paired.csv as a reader sees it: "Δ [lo, hi], p" per metric, `*` where significant."""
    pairs = pd.read_csv(require(eval_paths(params, dataset)["paired_csv"], "stage 06 (compare.table)"))
    return tables.paired_cells(pairs, evaluate.paired_keys(params))


def ablation_results(params: Params, dataset: str) -> dict[str, dict]:
    """{variant: results/<dataset>/ablations/<variant>.json} for the variants of params that ran (a variant
    that `ablations.run` cut has a result saying so, and no row)."""
    folder = params.root / "results" / dataset / "ablations"
    found = {name: json.loads((folder / f"{name}.json").read_text())
             for name in params.ablations.variants if (folder / f"{name}.json").is_file()}
    return {name: r for name, r in found.items() if "skipped" not in r}


def ablation_rows(params: Params, dataset: str, rows: dict[str, intervals.Scored]) -> pd.DataFrame:
    """One row per ablation variant with a result (metrics x 100, with intervals)."""
    return pd.DataFrame([table_row(dataset, name, ABLATION_SOURCE, r["profile"], r["seed"], r["metrics"], metric_keys(params))
                         | evaluate.interval_columns(params, rows[name])
                         for name, r in ablation_results(params, dataset).items()])


def block_label(size: int) -> str:
    return "all" if size == 0 else str(size)


def block_sweep(params: Params, dataset: str, table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """The block-size sweep: one row per block size (block_size "1" .. "all", order, variant, metric and
    its interval `<metric>_lo` / `_hi`) from the ablation variants that change only
    user_summary.block_size. The main fine-tuned row is left out: it trains on all rows, the variants
    on `ablations.limit`, so only they compare."""
    cols = [metric, metric + intervals.LO, metric + intervals.HI]
    points = []
    for name, r in ablation_results(params, dataset).items():
        if set(r["overrides"]) == {"user_summary.block_size"}:
            row = table[(table["variant"] == name) & (table["source"] == ABLATION_SOURCE)]
            points.append((r["overrides"]["user_summary.block_size"], name, *row.reindex(columns=cols).iloc[0]))
    out = pd.DataFrame(points, columns=["size", "variant", *cols]).drop_duplicates("size")
    out = out.assign(order=out["size"].replace(0, 10**9)).sort_values("order", kind="stable")
    return pd.DataFrame({"block_size": out["size"].map(block_label), "order": range(len(out)),
                         "variant": out["variant"], **{c: out[c] for c in cols}}).reset_index(drop=True)
