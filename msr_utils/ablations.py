"""Ablations, the TALLRec-style text-only baseline and the block-size sweep: stages 03 -> 04 -> 05
again with a few params changed, through the same code (no forks).

`ablations.variants` in params.yaml maps a name to dotted overrides (`no_recurrence:
{user_summary.mode: direct}`). A variant runs in a scratch project root,
data/ablations/<dataset>/<variant>/, whose params.yaml is the main one with zero-shot scoring switched
off (stage 05 scores it once), `ablations.limit.max_new_tokens` applied, then the variant's overrides
(they win). Its data/processed/<dataset> holds the first `ablations.limit.*_rows` rows of each split
(keeps the tiny profile fast) and links to the rest; data/models, data/cache and the dataset's item
summaries are symlinks to the main project's, so users.run, sft.run and
evaluate.run run there unchanged and generation caches are shared: a cache key holds the model, the
prompt and the block texts, so a variant reuses exactly the states it has in common with the main
run. The variant's metrics go to results/<dataset>/ablations/<variant>.json. The links and the
checkpoints are removed at the end: the folder (a DVC output) keeps only the variant's own files.

CLI (one DVC `ablations` stage per dataset x variant runs it):
    python -m msr_utils.ablations --dataset microlens50k --variant no_recurrence
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from msr_utils import evaluate, reported, scratch, sft, users
from msr_utils.config import DATASETS, ConfigError, Params, load_params

SCRATCH = "data/ablations"


def paths(params: Params, dataset: str, variant: str) -> dict[str, Path]:
    return {"root": params.path(SCRATCH) / dataset / variant,
            "result": params.root / "results" / dataset / "ablations" / f"{variant}.json"}


def overrides(params: Params, variant: str) -> dict[str, Any]:
    """The dotted overrides a variant runs with: limits, no zero-shot, then the variant's own."""
    if variant not in params.ablations.variants:
        raise ConfigError(f"ablations.variants has no variant {variant!r}; known: "
                          f"{', '.join(params.ablations.variants) or '(none)'}")
    out: dict[str, Any] = {"eval.zero_shot": False}
    if params.ablations.limit.max_new_tokens:
        out["user_summary.max_new_tokens"] = params.ablations.limit.max_new_tokens
    return out | params.ablations.variants[variant]


def variant_params(params: Params, variant: str, root: Path) -> Params:
    """Write root/params.yaml (the main params.yaml + `overrides`) and load it: a project at `root`."""
    try:
        return scratch.params_at(params, root, overrides(params, variant))
    except ConfigError as err:
        raise ConfigError(f"ablation {variant!r}: {err}") from None


def shared_paths(params: Params, dataset: str) -> list[str]:
    """What a variant reads from the main project (relative paths, linked into its root)."""
    return ["data/models", "data/cache", f"data/summaries/{dataset}/item_summaries.parquet", str(reported.FILE)]


def link(main: Params, dataset: str, root: Path) -> list[Path]:
    """Symlink the shared inputs of the main project into `root`, and give it the dataset's
    processed folder with the splits cut to ablations.limit (the rest linked). Returns what to
    remove afterwards."""
    main.path("data/cache").mkdir(parents=True, exist_ok=True)
    made = scratch.link(main, root, shared_paths(main, dataset))  # no data/models under the paper profile
    source = main.path(main.data.out_dir) / dataset
    if not source.is_dir():
        raise FileNotFoundError(f"{source} not found: run stage 01 (data prep) for {dataset} first")
    here = root / main.data.out_dir / dataset
    here.mkdir(parents=True, exist_ok=True)
    caps = main.ablations.limit
    for entry in sorted(source.iterdir()):
        n = {"train.parquet": caps.train_rows, "valid.parquet": caps.valid_rows,
             "test.parquet": caps.test_rows}.get(entry.name, 0)
        if n:
            pd.read_parquet(entry).head(n).to_parquet(here / entry.name, index=False)
            made.append(here / entry.name)
        else:
            made.append(scratch.symlink(here / entry.name, entry.resolve()))
    made.append(root / main.data.out_dir)
    return made


def cut(params: Params, dataset: str, variant: str) -> dict:
    """A variant that `ablations.run` leaves out: its result (no metrics) and its folder say so."""
    p = paths(params, dataset, variant)
    reason = (f"not run: profile {params.base.profile!r} runs only ablations.run = {', '.join(params.ablations.run)} "
              f"(its time budget); `dvc exp run -S 'profiles.{params.base.profile}.ablations.run=[]'` runs every variant")
    result = {"dataset": dataset, "variant": variant, "overrides": params.ablations.variants[variant],
              "profile": params.base.profile, "skipped": reason, "metrics": None}
    p["root"].mkdir(parents=True)
    (p["root"] / "SKIPPED.txt").write_text(reason + "\n")
    p["result"].parent.mkdir(parents=True, exist_ok=True)
    p["result"].write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(params: Params, dataset: str, variant: str, progress: bool = False) -> dict:
    """Stages 03, 04 and 05 for one variant in its scratch root; writes and returns its result
    (a variant left out of a non-empty `ablations.run`: `cut`)."""
    p = paths(params, dataset, variant)
    shutil.rmtree(p["root"], ignore_errors=True)  # a variant starts clean; the shared caches make it cheap
    if params.ablations.run and variant not in params.ablations.run:
        return cut(params, dataset, variant)
    vp = variant_params(params, variant, p["root"])
    links = link(params, dataset, p["root"])
    seconds = {}
    try:
        start = time.perf_counter()
        _, _, user_stats = users.run(vp, dataset)
        seconds["user_summaries"] = time.perf_counter() - start
        start = time.perf_counter()
        trained = sft.run(vp, dataset, progress=progress)
        seconds["sft"] = time.perf_counter() - start
        start = time.perf_counter()
        scored = evaluate.run(vp, dataset)
        seconds["evaluation"] = time.perf_counter() - start
        for fig in scored["figures"].values():
            plt.close(fig)
    finally:
        scratch.unlink(links)
        shutil.rmtree(vp.path("data/checkpoints"), ignore_errors=True)  # in the scratch root only
    scored_as = evaluate.variants(vp)[-1]  # fine_tuned unless the variant turned the adapter off
    result = {
        "dataset": dataset, "variant": variant, "overrides": params.ablations.variants[variant],
        "scored": scored_as, "profile": vp.base.profile, "seed": vp.base.seed,
        "settings": {"user_summary.mode": vp.user_summary.mode, "user_summary.block_size": vp.user_summary.block_size,
                     "item_summary.enabled": vp.item_summary.enabled,
                     "sft.candidate_image": vp.sft.candidate_image,
                     "sft.candidate_summary": vp.sft.candidate_summary,
                     "user_summary.max_new_tokens": vp.user_summary.max_new_tokens,
                     "rows": {k: getattr(params.ablations.limit, f"{k}_rows") for k in ("train", "valid", "test")}},
        "metrics": scored["metrics"][scored_as],
        "user_summaries": {k: user_stats[k] for k in ("llm_calls", "cached", "block_states", "rows")},
        "sft": {k: trained.metrics.get(k) for k in ("steps", "train_examples", "train_loss_last", "eval_loss")},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    p["result"].parent.mkdir(parents=True, exist_ok=True)
    p["result"].write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--variant", required=True, help="a name under ablations.variants in params.yaml")
    parser.add_argument("--params", default=None, help="params.yaml (default: found upwards from the cwd)")
    args = parser.parse_args(argv)
    result = run(load_params(args.params), args.dataset, args.variant)
    if "skipped" in result:
        print(f"{args.variant}: {result['skipped']}")
        return
    print(json.dumps({k: result[k] for k in ("variant", "settings", "seconds")} | {
        "auc": result["metrics"]["auc"]}, indent=2))


if __name__ == "__main__":
    main()
