"""Stage 05: score every test candidate with P("Yes") and report the paper's metrics.

Variants: `zero_shot` (the profile's base VLM; eval.zero_shot) and, with eval.adapter, `fine_tuned`
(the stage-04 LoRA adapter in data/adapters/<dataset>/ on the same base). Unlike the official script
(first 100 users, generate() per candidate, pooled AUC over reshape(-1, 21)), every test row is
scored and candidates are grouped explicitly by their row (metrics.evaluate).

Writes under results/<dataset>/: metrics.json (DVC metrics: point values), scores.parquet (one row
per candidate and variant), results.md / results.csv (ours, each metric with its 95% bootstrap
interval over test groups (msr_utils/intervals.py), the paper's reported numbers beside the same
variant (msr_utils/reported.py), and fine_tuned - zero_shot paired on the same groups),
hr_at_k/<variant>.csv (DVC plots: k, hr) and plots/*.png.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from msr_utils import intervals, launch, metrics, models, recommender, reported, scoring, tables
from msr_utils.config import Params, pipeline_check
from msr_utils.data.schema import ITEM, TARGET_POS, TITLE, USER
from msr_utils.paths import STAGE_01, STAGE_02, STAGE_03, artifacts, require
from msr_utils.rows import first
from msr_utils.threads import pool, processes

VARIANT, SCORE, GROUP = "variant", metrics.SCORE, "group"
ZERO_SHOT, FINE_TUNED = "zero_shot", "fine_tuned"
SCORE_COLUMNS = [recommender.SPLIT, USER, TARGET_POS, ITEM, recommender.LABEL, SCORE, VARIANT]
SPLIT = "test"


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    results = a["results"]
    return {
        **a,
        "metrics": results / "metrics.json",
        "scores": results / "scores.parquet",
        "paired_csv": results / "paired.csv",  # stage 06: fine_tuned against every row (compare.py)
        "hr_at_k": results / "hr_at_k",
        "plots": results / "plots",
        "reported": params.root / reported.FILE,
    }


def build_examples(params: Params, dataset: str, loaded: models.LoadedModel, split: str = SPLIT) -> pd.DataFrame:
    """The `split` rows' candidates (target + data.neg_eval negatives) as recommender prompts
    (recommender.examples), eval.limit rows; stage 05 scores the test split, msr_utils.curve the valid one."""
    p = paths(params, dataset)
    for name in (split, "items", "info"):
        require(p[name], STAGE_01)
    require(p["preferences"], STAGE_03)
    rows = first(pd.read_parquet(p[split]), params.eval.limit)
    item_summaries = None
    if params.item_summary.enabled and params.sft.candidate_summary:
        item_summaries = pd.read_parquet(require(p["item_summaries"], STAGE_02, "set sft.candidate_summary: false"))
    return recommender.examples(
        rows, pd.read_parquet(p["preferences"]), pd.read_parquet(p["items"]), item_summaries,
        loaded.processor, kind=json.loads(p["info"].read_text())["noun"], split=split,
        with_image=params.sft.candidate_image and loaded.kind == "vlm",
        placeholder_images=params.item_summary.placeholder_images, order=params.recommender.order)


def check_adapter(adapter_dir: Path, model_ref: str | None = None) -> None:
    """Fail, saying what to do, when stage 04 has not written the adapter or (given `model_ref`)
    trained it on another base model than the one loaded now."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"fine-tuned adapter not found: {adapter_dir}/adapter_config.json. Run stage 04 "
                                "(notebooks/04_qlora_sft.ipynb, `dvc repro`) first, or set eval.adapter: false "
                                "to evaluate the zero-shot model only")
    trained = adapter_dir / "sft_params.json"  # stage 04 records the base model it trained on
    base = json.loads(trained.read_text()).get("base_model") if trained.is_file() else None
    if model_ref is not None and base is not None and base != model_ref:
        raise ValueError(f"adapter {adapter_dir} was trained on {base!r}, but the base model now is "
                         f"{model_ref!r}; rerun stage 04 (fine-tuning) for this model")


def load_adapter(loaded: models.LoadedModel, adapter_dir: Path) -> models.LoadedModel:
    """The base model with the stage-04 LoRA adapter applied (in place: score zero-shot first), in the
    base model's dtype: peft's default keeps LoRA weights in fp32, which on the small profile's bf16
    model runs every LoRA matmul in fp32 (1.17x the time per fine-tuned candidate, benchmarks/bench_small.py)."""
    from peft import PeftModel

    check_adapter(adapter_dir, loaded.model_ref)
    model = PeftModel.from_pretrained(loaded.model, adapter_dir, autocast_adapter_dtype=False).eval()
    return dataclasses.replace(loaded, model=model, model_ref=f"{loaded.model_ref}+{adapter_dir.name}-lora")


def score_variant(params: Params, loaded: models.LoadedModel, examples: pd.DataFrame, variant: str,
                  expect_size: int | None, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Scores of one model variant (SCORE_COLUMNS) and its metrics, with the mean answer mass."""
    start = time.perf_counter()
    scores = scoring.score_examples(loaded, examples, image_root=params.root, batch_size=params.eval.batch_size,
                                    order=params.recommender.order, progress=progress, desc=variant,
                                    with_mass=True)
    seconds = time.perf_counter() - start
    out = examples.assign(**{SCORE: scores[:, 0], VARIANT: variant})
    result = metrics.evaluate(out.assign(**{GROUP: group_ids(out)}), ks=params.eval.ks, group_col=GROUP,
                              expect_size=expect_size)
    result |= {"answer_mass": float(scores[:, 1].mean()),  # P(Yes) + P(No) of the whole vocabulary
               "model": loaded.model_ref, "seconds": round(seconds, 2),
               "candidates_per_s": round(len(out) / max(seconds, 1e-9), 1)}
    return out[SCORE_COLUMNS], result


def score_apart(params: Params, dataset: str, variant: str, examples: pd.DataFrame, expect_size: int | None,
                loaded: models.LoadedModel | None = None) -> tuple[pd.DataFrame, dict]:
    """score_variant of one variant: the profile's model `loaded` here, or loaded by this call (a
    process of its own), plus the adapter for fine_tuned."""
    progress = loaded is not None
    if loaded is None:
        torch.manual_seed(params.base.seed)
        loaded = models.load_profile(params, "vlm")
    if variant == FINE_TUNED:
        loaded = load_adapter(loaded, paths(params, dataset)["adapter"])
    return score_variant(params, loaded, examples, variant, expect_size, progress=progress)


def group_ids(df: pd.DataFrame) -> pd.Series:
    """One id per evaluation row (user + target position): the group of its candidates."""
    return df[USER].astype(str) + "@" + df[TARGET_POS].astype(str)


def hr_curve(scores: pd.DataFrame) -> pd.DataFrame:
    """HR@k for k = 1 .. candidates per row, per variant: columns k, variant, hr."""
    rows = []
    for variant, part in scores.groupby(VARIANT, sort=False):
        ranks = metrics.positive_ranks(part.assign(**{GROUP: group_ids(part)}), group_col=GROUP)
        n = int(part.groupby(group_ids(part)).size().max())
        rows += [{"k": k, VARIANT: variant, "hr": metrics.hit_rate(ranks, k)} for k in range(1, n + 1)]
    return pd.DataFrame(rows)


def results_table(params: Params, dataset: str, result: dict, scored: dict[str, intervals.Scored]) -> pd.DataFrame:
    """Our metrics (x 100) per variant with their intervals, the paper's numbers beside them (reported.py)."""
    label = source(params)
    keys = metric_keys(params)
    rows = [table_row(dataset, v, label, params.base.profile, params.base.seed, result[v], keys)
            | interval_columns(params, scored[v]) for v in variants(params)]
    table = reported.side_by_side(pd.DataFrame(rows), dataset, paths(params, dataset)["reported"], extra=False)
    return tables.arrange(table, keys).astype({"seed": "Int64", "n_groups": "Int64"})


def source(params: Params) -> str:
    """What our rows' numbers come from: a pipeline check (random weights), or which model ran and how."""
    if pipeline_check(params.base.profile):
        return f"pipeline check ({params.base.profile} random model), not a result"
    chosen = params.models_in_use
    if chosen.role("vlm") == "lm":
        return (f"ours: real weights {chosen.recommender}, text only (no VLM; an item's image enters only as its "
                "item summary, none without a real image)")
    return f"ours: {chosen.vlm} (recommender), {chosen.lm} (user summaries)"


def scored_rows(params: Params, scores: pd.DataFrame, expect_size: int | None = None) -> dict[str, intervals.Scored]:
    """Each variant of a stage-05 score table as an intervals.Scored row (one group per test row)."""
    return {v: intervals.scored(v, part.assign(**{GROUP: group_ids(part)}), params.eval.ks, GROUP,
                                expect_size=expect_size)
            for v, part in scores.groupby(VARIANT, sort=False)}


def interval_columns(params: Params, row: intervals.Scored) -> dict[str, float]:
    """<metric>_lo / _hi (x 100) of every metric of the tables, with eval.intervals' settings."""
    i = params.eval.intervals
    return intervals.columns(row, metric_keys(params), i.resamples, params.base.seed, i.level)


def paired_table(params: Params, a: intervals.Scored, others: list[intervals.Scored]) -> pd.DataFrame:
    """`a` against each of `others` on the paper's metrics and GAUC (intervals.paired), eval.intervals."""
    i = params.eval.intervals
    return intervals.paired(a, others, paired_keys(params), i.resamples, params.base.seed, i.level)


def paired_keys(params: Params) -> list[str]:
    return [k for k in intervals.PAIRED if k in metric_keys(params)]


def table_row(dataset: str, variant: str, source: str, profile: str, seed: int, result: dict,
              keys: list[str]) -> dict:
    """One row of a result table: where it comes from, the metrics of `result` named in `keys` (x 100,
    2 decimals), its model and n_groups (None where `result` has none)."""
    return {"dataset": dataset, VARIANT: variant, "source": source, "profile": profile, "model": result.get("model"),
            "seed": seed, **{k: round(100 * x, 2) for k, x in result.items() if k in keys},
            "n_groups": result.get("n_groups")}


def metric_keys(params: Params) -> list[str]:
    return ["auc", "gauc"] + [f"{m}@{k}" for k in params.eval.ks for m in ("hr", "ndcg", "mrr")]


def variants(params: Params) -> list[str]:
    """zero_shot (eval.zero_shot) and fine_tuned (eval.adapter), in that order."""
    return [v for v, on in ((ZERO_SHOT, params.eval.zero_shot), (FINE_TUNED, params.eval.adapter)) if on]


def plot_scores(scores: pd.DataFrame):
    """P(Yes) histograms, positives vs negatives, one panel per variant."""
    names = list(dict.fromkeys(scores[VARIANT]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        part = scores[scores[VARIANT] == name].assign(
            candidate=lambda d: d[recommender.LABEL].map({1: "positive", 0: "negative"}))
        sns.histplot(part, x=SCORE, hue="candidate", stat="density", common_norm=False, bins=30, ax=ax)
        ax.set(title=name, xlabel='P("Yes")')
    fig.tight_layout()
    return fig


def plot_hr(curve: pd.DataFrame):
    """HR@K against K, one line per variant."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(curve, x="k", y="hr", hue=VARIANT, marker="o", ax=ax)
    n = curve["k"].max()
    ax.plot([0, n], [0, 1], ls="--", c="grey", label="random")  # HR@K of a random ranking: K / n
    ax.legend()
    ax.set(xlabel="K", ylabel="HR@K", ylim=(0, 1.02))
    fig.tight_layout()
    return fig


def run(params: Params, dataset: str) -> dict:
    """Score the test split with each variant; write metrics, scores, tables and plots.

    Returns {"metrics", "settings", "scores", "examples", "table", "hr_at_k", "figures", "example"}:
    "example" is the first test row's candidates with their scores and ranks. With base.processes
    N > 1, on N processes (msr_utils.launch), each scoring every N-th group: the same scores."""
    if launch.wanted(params):
        return launch.run(params, "evaluation", dataset)
    p = paths(params, dataset)
    if params.eval.adapter:
        check_adapter(p["adapter"])  # before loading anything
    torch.manual_seed(params.base.seed)
    loaded = models.load_profile(params, "vlm")
    if params.eval.adapter:
        check_adapter(p["adapter"], loaded.model_ref)  # before any scoring
    examples = build_examples(params, dataset, loaded)
    expect_size = 1 + json.loads(p["info"].read_text())["neg_eval"]

    result: dict = {}
    names = variants(params)
    n = 1 if loaded.device.type != "cpu" or launch.world()[1] > 1 else processes(params.eval.workers, len(names))
    with pool(n) as variants_at:  # n > 1: a spawned process per variant, each loading its own model: the same scores
        futures = [variants_at.submit(score_apart, params, dataset, variant, examples, expect_size,
                                      loaded if n == 1 else None) for variant in names]
        done = [f.result() for f in tqdm(futures, desc=f"variants ({n} processes)", disable=n == 1)]
    parts = [scores for scores, _ in done]
    result |= {variant: metrics_ for variant, (_, metrics_) in zip(names, done)}
    scores = pd.concat(parts, ignore_index=True)
    settings = {"dataset": dataset, "split": SPLIT, "profile": params.base.profile, "seed": params.base.seed,
                "vlm": params.models_in_use.vlm, "ks": list(params.eval.ks),
                "adapter": str(p["adapter"].relative_to(params.root)) if params.eval.adapter else None}
    result |= settings
    if not launch.is_main():  # the main process writes
        return {"metrics": result, "settings": settings, "scores": scores}

    scored = scored_rows(params, scores, expect_size)
    table, curve = results_table(params, dataset, result, scored), hr_curve(scores)
    paired = (paired_table(params, scored[FINE_TUNED], [scored[ZERO_SHOT]])
              if {FINE_TUNED, ZERO_SHOT} <= set(scored) else None)
    figures = {"score_distribution": plot_scores(scores), "hr_at_k": plot_hr(curve)}
    for folder in (p["plots"], p["hr_at_k"]):
        folder.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(result, indent=2) + "\n")
    scores.to_parquet(p["scores"], index=False)
    table.to_csv(p["table_csv"], index=False)
    p["table_md"].write_text(markdown(table, params, dataset, paired))
    for stale in p["hr_at_k"].glob("*.csv"):  # a variant dropped since the last run
        stale.unlink()
    for variant, part in curve.groupby(VARIANT):
        part[["k", "hr"]].to_csv(p["hr_at_k"] / f"{variant}.csv", index=False)
    for name, fig in figures.items():
        fig.savefig(p["plots"] / f"{name}.png", dpi=120)
        plt.close(fig)  # the notebook displays the returned figure once
    return {"metrics": result, "settings": settings, "scores": scores, "examples": examples, "table": table,
            "paired": paired,
            "hr_at_k": curve, "figures": figures, "example": candidates_of(scores, pd.read_parquet(p["items"]))}


def candidates_of(scores: pd.DataFrame, items: pd.DataFrame, row: int = 0) -> pd.DataFrame:
    """One evaluation row's candidates (the `row`-th group): title, label, and per variant the score
    and the rank among the row's candidates (1 = best)."""
    groups = group_ids(scores)
    part = scores[groups == groups.unique()[row]]
    wide = part.pivot(index=[ITEM, recommender.LABEL], columns=VARIANT, values=SCORE)
    ranks = wide.rank(ascending=False, method="max").astype(int)  # pessimistic on ties, as the metrics
    names = list(dict.fromkeys(part[VARIANT]))
    columns = [ITEM, recommender.LABEL] + [f"{c}_{v}" for v in names for c in ("score", "rank")] + [TITLE]
    out = wide.add_prefix("score_").join(ranks.add_prefix("rank_")).reset_index()
    return (out.merge(items[[ITEM, TITLE]], on=ITEM, how="left")[columns]
            .sort_values(f"rank_{names[0]}", kind="stable").reset_index(drop=True))


def markdown(table: pd.DataFrame, params: Params, dataset: str, paired: pd.DataFrame | None = None) -> str:
    """results.md: the paper's metrics with intervals, fine_tuned vs zero_shot, every metric; where the
    numbers come from."""
    note = (f"**Pipeline check, not results**: the {params.base.profile} profile scores with small "
            "random-initialised models." if pipeline_check(params.base.profile) else f"Profile `{params.base.profile}`.")
    shown = reported.display(table, dataset, paths(params, dataset)["reported"])
    chosen = params.models_in_use
    parts = [f"# {dataset}: test results\n\nAll metrics x 100. Ours: profile `{params.base.profile}`, model "
             f"`{chosen.recommender}`, seed {params.base.seed}, {table['n_groups'].iloc[0]} test rows "
             f"(eval.limit = {params.eval.limit}; 0 = all), candidates grouped by row. "
             f"{note} {reported.NOTE} {tables.INTERVAL_NOTE}",
             "## AUC, HR@5, MRR@5 (the paper's metrics)", tables.markdown_rows(tables.lead(shown))]
    if paired is not None:
        parts += ["## Fine-tuned against zero-shot, paired", tables.PAIRED_NOTE,
                  tables.markdown_rows(tables.paired_cells(paired, paired_keys(params)))]
    parts += ["## Every metric", tables.markdown_rows(tables.with_interval(shown, metric_keys(params)))]
    return "\n\n".join(parts) + "\n"
