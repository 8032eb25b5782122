"""The no-LLM baselines on every user of a dataset (paper protocol): real results, no weights needed.

Stage 01 and stage 06 run unchanged in a scratch project, data/full/<dataset>/ (git-ignored): its
params.yaml is the main one + FULL (all users, the paper protocol, every test row, the baselines
below) + any `--set KEY=VALUE`, and it links the main project's data/sample and data/raw. Stage 01 is
skipped when its outputs there were made with the same settings (a killed run resumes from stage 06);
item features are cached there too. The table lands in the main project:
results/<dataset>/full_data/baselines.md (mean ± std over the seeds, both tie rules), .csv (one row
per baseline and seed) and .json (everything, with the settings, wall time and peak RSS).

Not gru4rec_summary: its item summaries come from stage 02's tiny random VLM. The shipped sample has
no covers, so gru4rec_image reads placeholder cards (the title on a coloured card) and is labelled so.

CLI:
    python -m msr_utils.baselines.full --dataset microlens50k [--set baselines.seeds=5 ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from msr_utils import scratch
from msr_utils.baselines import run as baselines
from msr_utils.baselines.common import EXPECTED
from msr_utils.config import DATASETS, Params, load_params, parse_sets
from msr_utils.data import prepare
from msr_utils.data.schema import SPLITS
from msr_utils.paths import artifacts

SCRATCH = "data/full"
MODELS = ["pop", "gru4rec", "sasrec", "gru4rec_title", "gru4rec_image"]
FULL = {"data.limit_users": 0, "data.protocol": "paper", "eval.limit": 0, "baselines.models": MODELS}
LABELS = {"pop": "pop (deterministic: one run)", "gru4rec_title": "gru4rec_title (MiniLM of titles)"}
PLACEHOLDER_LABEL = "gru4rec_image (placeholder cards: title on a coloured card, no covers)"
TIE_RULE = ("Tie rule: **pess.** ranks a positive tied with negatives below all of them (rank = 1 + #scoring "
            "above + #tied); **rand.** is the exact expected value under a uniformly random order of the tied "
            "candidates. AUC and GAUC count a tied pair as 1/2 (the same under both rules). `ties` = share "
            "of test rows whose positive ties with at least one negative.")


def paths(main: Params, dataset: str, out: Path | None = None, root: Path | None = None) -> dict[str, Path]:
    out = out or main.root / "results" / dataset / "full_data"
    return {"root": root or main.path(SCRATCH) / dataset, "md": out / "baselines.md",
            "csv": out / "baselines.csv", "json": out / "baselines.json"}


def prepared(params: Params, dataset: str) -> bool:
    """Stage 01's outputs exist in this project and were made with these settings."""
    a = artifacts(params, dataset)
    files = [a["info"], prepare.metrics_path(params, dataset), a["items"], *(a[s] for s in SPLITS)]
    if not all(f.is_file() for f in files):
        return False
    made, want = json.loads(a["info"].read_text()), json.loads(json.dumps(prepare.settings(params, dataset)))
    return {k: made.get(k) for k in want} == want


def stage_01(params: Params, dataset: str) -> dict:
    """Stage 01 in the scratch project unless it is up to date; its metrics (users, rows, ...)."""
    done = prepare.metrics_path(params, dataset)
    if prepared(params, dataset):
        print(f"stage 01: up to date in {params.root} (same settings), skipped", file=sys.stderr)
    else:
        for stale in (artifacts(params, dataset)["info"], done):  # written last: a kill leaves no false match
            stale.unlink(missing_ok=True)
        print(f"stage 01: {dataset}, data.limit_users = {params.data.limit_users} (0 = all) ...", file=sys.stderr)
        prepare.run(params, dataset)
    return json.loads(done.read_text())


def run(main: Params, dataset: str, sets: dict[str, Any] | None = None, out: Path | None = None,
        root: Path | None = None) -> dict:
    """Stages 01 and 06 on all users in the scratch project; writes and returns the result."""
    start, p = time.perf_counter(), paths(main, dataset, out, root)
    overrides = FULL | (sets or {})
    params = scratch.params_at(main, p["root"], overrides)
    scratch.link(main, p["root"], [main.data.sample_dir, main.data.raw_dir])
    data = stage_01(params, dataset)
    table = baselines.run(params, dataset)
    stage_06 = json.loads(baselines.paths(params, dataset)["metrics"].read_text())
    result = {
        "dataset": dataset, "sets": sets or {}, "overrides": overrides, "protocol": params.data.protocol,
        "users": data["users"], "items": data["items"], "test_rows": stage_06["test_rows"],
        "candidates": 1 + params.data.neg_eval, "seeds": sorted({s for r in table["seeds"] for s in map(int, r.split())}),
        "split_seed": params.base.seed, "images_placeholder": data["images_placeholder"], "images_real": data["images_real"],
        "image_encoder": stage_06["image_encoder"], "text_encoder": stage_06["text_encoder"], "ks": list(params.eval.ks),
        "epochs": params.baselines.epochs, "patience": params.baselines.patience,
        "early_stop_metric": params.baselines.early_stop_metric,
        "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb(), "models": stage_06["models"],
    }
    p["json"].parent.mkdir(parents=True, exist_ok=True)
    p["json"].write_text(json.dumps(result, indent=2) + "\n")
    pd.read_csv(baselines.paths(params, dataset)["table"]).to_csv(p["csv"], index=False)
    p["md"].write_text(markdown(table, result))
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---- the markdown table --------------------------------------------------------------------------

def cell(row: pd.Series, key: str) -> str:
    """`mean ± std` x 100 over the seeds (just the mean for one run)."""
    mean = f"{100 * row[key]:.2f}"
    return mean if row["n_seeds"] == 1 else f"{mean} ± {100 * row[key + '_std']:.2f}"


def label(name: str, result: dict) -> str:
    if name == "gru4rec_image" and result["images_placeholder"]:
        return PLACEHOLDER_LABEL
    return LABELS.get(name, name)


def epochs(block: dict) -> str:
    """Each seed's best epoch / epochs run ("-" for pop, which does not train)."""
    runs = [r for r in block["runs"].values() if "best_epoch" in r]
    return ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs) or "-"


def both_rules(row: pd.Series, metric: str) -> list[str]:
    return [cell(row, metric), cell(row, metric + EXPECTED)]


def markdown(table: pd.DataFrame, result: dict) -> str:
    """The headline table at K = 10 (or the largest K), then every cutoff; the facts around them."""
    ks = result["ks"]
    k = 10 if 10 in ks else max(ks)
    head = ["model", "AUC", "GAUC"] + [f"{m}@{k} {rule}" for m in ("HR", "NDCG", "MRR") for rule in ("pess.", "rand.")]
    lines = [_row(head + ["ties", "best epoch / run"]), _row(["---"] * (len(head) + 2))]
    for _, r in table.iterrows():
        lines.append(_row([label(r["name"], result), cell(r, "auc"), cell(r, "gauc"),
                           *(v for m in ("hr", "ndcg", "mrr") for v in both_rules(r, f"{m}@{k}")),
                           f"{100 * r['tied_share']:.1f} %", epochs(result["models"][r["name"]])]))
    every = [_row(["model", "K"] + [f"{m} {rule}" for m in ("HR", "NDCG", "MRR") for rule in ("pess.", "rand.")]),
             _row(["---"] * 8)]
    for _, r in table.iterrows():
        every += [_row([r["name"], str(kk), *(v for m in ("hr", "ndcg", "mrr") for v in both_rules(r, f"{m}@{kk}"))])
                  for kk in ks]
    seeds = ", ".join(map(str, result["seeds"]))
    everyone = not result["overrides"]["data.limit_users"]
    users = f"{'all ' if everyone else 'a cut: '}{result['users']:,} users" + (" (after k-core)" if everyone else "")
    return "\n".join([
        f"# {result['dataset']}: baselines on {'the full data' if everyone else 'a cut of the data'} (no LLM)", "",
        f"**Results on real data**: {users} of the shipped {result['dataset']} sample, {result['protocol']} protocol: {result['test_rows']:,} test rows (one per test user) x "
        f"{result['candidates']} candidates (the target + {result['candidates'] - 1} sampled negatives), "
        f"{result['items']:,} items. No LLM is involved. The LLM rows elsewhere in `results/` (results.md, "
        "comparison.md) are pipeline checks on random tiny weights, not results.", "",
        f"Metrics x 100; each cell is the mean ± sample std over the seeds {seeds} (they change the weights' "
        f"initialisation and the batch order; the split and candidates are fixed by seed {result['split_seed']}). "
        f"Training: at most {result['epochs']} epochs, early stopping on the valid "
        f"{result['early_stop_metric']} with patience {result['patience']}; best epoch / epochs run per seed in the last column.",
        "", TIE_RULE, "",
        *lines, "",
        f"Image features: {result['image_encoder']}; text features: {result['text_encoder']}."
        + (f" {result['images_placeholder']:,} of {result['items']:,} items have no cover in the sample, so "
           "gru4rec_image encodes placeholder cards (the title drawn on a coloured card): read it as a title "
           "rendering, not as images." if result["images_placeholder"] and "gru4rec_image" in set(table["name"]) else ""),
        "",
        "## Every cutoff", "", *every, "",
        f"Regenerate: `{command(result)}` ({result['seconds'] / 60:.1f} min, peak RSS "
        f"{result['peak_rss_mb'] / 1024:.2f} GB in the run that wrote this).", "",
    ])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def command(result: dict) -> str:
    sets = [f"--set {shlex.quote(k + '=' + json.dumps(v, separators=(',', ':')))}" for k, v in result["sets"].items()]
    return " ".join(["python -m msr_utils.baselines.full --dataset", result["dataset"], *sets])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted params override, e.g. baselines.seeds=5 (repeatable; wins over the defaults)")
    parser.add_argument("--params", default=None, help="params.yaml (default: found upwards from the cwd)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default results/<dataset>/full_data)")
    parser.add_argument("--scratch", type=Path, default=None, help=f"scratch project (default {SCRATCH}/<dataset>)")
    args = parser.parse_args(argv)
    main_params = load_params(args.params)
    result = run(main_params, args.dataset, parse_sets(args.set), args.out, args.scratch)
    print(paths(main_params, args.dataset, args.out)["md"].read_text())
    print(json.dumps({k: result[k] for k in ("users", "test_rows", "seeds", "seconds", "peak_rss_mb")}))


if __name__ == "__main__":
    main()
