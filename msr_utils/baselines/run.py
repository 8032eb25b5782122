"""Stage 06: train every baseline in `baselines.models` on the train rows, early-stop on valid, score
the test rows' candidates and compute the same metrics as stage 05 (`metrics.evaluate`, one group
per row, `eval.ks`, the first `eval.limit` test rows when set), plus HR/NDCG/MRR@K expected under a
random order of tied candidates (`<metric>_expected`) and the share of rows with a tied positive.

Each neural baseline trains once per seed (`baselines.seeds`: base.seed, base.seed + 1, ...); its
frozen item features are computed once (cached under data/cache/<ds>/baselines/). Pop has no
randomness: it runs once. The runs share `baselines.workers` processes (0: one per core). `run`
returns one row per baseline: the mean over its seeds, `<metric>_std` (sample std; 0 for one run)
and n_seeds.

Writes results/<ds>/baselines.csv (one row per baseline and seed), results/<ds>/baselines.json
(DVC metrics: per baseline the mean, `std` and each seed's run under `runs`; the encoders used) and
results/<ds>/baseline_scores.parquet (every run's candidate scores: name, seed, row_key, item_id,
label, score; stage 06's intervals and paired tests read them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from msr_utils.baselines import features, gru4rec, pop, sasrec
from msr_utils import metrics
from msr_utils.baselines.common import GROUP, Vocab, evaluate_table, long_table
from msr_utils.baselines.train import TrainConfig
from msr_utils.config import Params
from msr_utils.data.schema import ITEM, SPLITS, TITLE
from msr_utils.paths import STAGE_02, artifacts, require
from msr_utils.threads import pool, processes, set_torch_threads, torch_threads


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    return {
        **a,
        "cache": a["cache"] / "baselines",
        "metrics": a["results"] / "baselines.json",
        "table": a["results"] / "baselines.csv",
        "scores": a["results"] / "baseline_scores.parquet",
    }


def summary_texts(items: pd.DataFrame, path: Path) -> tuple[list[str], int]:
    """Each item's stage-02 summary (its title where it has none); (texts, number of fallbacks)."""
    s = pd.read_parquet(require(path, STAGE_02, "drop gru4rec_summary from baselines.models"), columns=[ITEM, "summary"]).drop_duplicates(ITEM).set_index(ITEM)["summary"]
    got = items[ITEM].map(s)
    missing = got.isna() | (got.astype(str).str.strip() == "")
    return items[TITLE].where(missing, got).fillna("").astype(str).tolist(), int(missing.sum())


SCORE_COLUMNS = ["name", "seed", GROUP, ITEM, metrics.LABEL, metrics.SCORE]  # baseline_scores.parquet
SEEDLESS = ("pop",)  # no randomness: one run stands for every seed
ID_ONLY = ("pop", "gru4rec", "sasrec")  # no item features


def seeds(params: Params, name: str) -> list[int]:
    """The seeds `name` trains with: base.seed, base.seed + 1, ... (`baselines.seeds` of them)."""
    n = 1 if name in SEEDLESS else params.baselines.seeds
    return [params.base.seed + i for i in range(n)]


def item_features(name: str, params: Params, items: pd.DataFrame, dataset: str) -> tuple[np.ndarray | None, dict]:
    """The frozen item features a multimodal variant reads (None for the ID-only ones), and about them."""
    b, p = params.baselines, paths(params, dataset)
    if name in ID_ONLY:
        return None, {}
    if name == "gru4rec_image":
        return features.image_features(items, params.root, b.image_encoder, b.image_size,
                                       b.feature_batch_size, p["cache"])
    if name == "gru4rec_summary":
        texts, missing = summary_texts(items, p["item_summaries"])
        feats, info = features.text_features(texts, b.text_encoder, b.feature_batch_size, p["cache"], "summary")
        return feats, info | {"summary_missing": missing, "summary_items": len(texts)}  # missing: their title instead
    if name == "gru4rec_title":
        return features.text_features(items[TITLE].fillna("").astype(str).tolist(), b.text_encoder,
                                      b.feature_batch_size, p["cache"], "title")
    raise ValueError(f"unknown baseline {name!r}")


def make(name: str, params: Params, vocab: Vocab, feats: np.ndarray | None, seed: int | None = None,
         progress: bool = True):
    """A fresh, untrained baseline seeded with `seed` (default base.seed); `progress`: its epoch bar."""
    cfg = dataclasses.replace(TrainConfig.from_params(params, seed), progress=progress)
    if name == "pop":
        return pop.Pop()
    if name == "sasrec":
        return sasrec.make(vocab, cfg, name=name)
    return gru4rec.make(vocab, cfg, feats, name=name)


def build(name: str, params: Params, items: pd.DataFrame, vocab: Vocab, dataset: str, seed: int | None = None):
    """(baseline, info about its inputs) for one name of baselines.models."""
    feats, info = item_features(name, params, items, dataset)
    return make(name, params, vocab, feats, seed), info


def workers(params: Params, jobs: int) -> int:
    """Processes for `jobs` runs: baselines.workers, 0 = one per CPU core this process may use."""
    return processes(params.baselines.workers, jobs)


def run(params: Params, dataset: str) -> pd.DataFrame:
    """Every requested baseline on one dataset, every seed; one row per baseline (mean over seeds,
    spread); writes json + csv.

    The frozen features and the (baseline, seed) runs go to `workers` processes (spawned; each with
    base.threads torch threads): the feature models' features first (the longest path), the ID-only
    runs beside them, a feature model's runs once its features are back. Every run is seeded on its
    own, so any number of workers gives the same numbers."""
    p = paths(params, dataset)
    rows = {s: pd.read_parquet(p[s]) for s in SPLITS}
    if params.eval.limit:
        rows["test"] = rows["test"].head(params.eval.limit)
    items = pd.read_parquet(p["items"])
    jobs = [(name, seed) for name in params.baselines.models for seed in seeds(params, name)]
    n = workers(params, len(jobs))
    about, futures, done = {}, {}, {}
    bar = tqdm(total=len(jobs), desc=f"baselines x seeds ({n} {'process' if n == 1 else 'processes'})")
    try:
        with torch_threads(params.base.threads), pool(n, _start, (params, rows, items, dataset, n == 1)) as runs:
            featured = {runs.submit(_features, name): name for name in params.baselines.models if name not in ID_ONLY}
            for name in params.baselines.models:
                if name in ID_ONLY:
                    about[name] = {"feature_seconds": 0.0, "runs": {}}
                    futures |= {runs.submit(_fit_seed, name, seed, None): (name, seed) for seed in seeds(params, name)}
            for future in as_completed(featured):
                name = featured[future]
                feats, info, seconds = future.result()
                about[name] = {**info, "feature_seconds": seconds, "runs": {}}
                futures |= {runs.submit(_fit_seed, name, seed, feats): (name, seed) for seed in seeds(params, name)}
            for future in as_completed(futures):
                name, seed = futures[future]
                done[name, seed] = future.result()
                bar.set_postfix_str(f"{name} seed {seed}: auc {done[name, seed]['result']['auc']:.3f}")
                bar.update()
    finally:
        _WORKER.clear()
        bar.close()
    per_seed = pd.DataFrame([{"name": name, "seed": seed, **done[name, seed]["result"],
                              "seconds": done[name, seed]["seconds"]} for name, seed in jobs])
    for name, seed in jobs:
        about[name]["runs"][str(seed)] = {**done[name, seed]["result"], **done[name, seed]["fitted"],
                                          "seconds": done[name, seed]["seconds"]}
    scores = pd.concat([done[job]["scores"].assign(name=job[0], seed=job[1]) for job in jobs], ignore_index=True)
    table = summary(per_seed)
    b = params.baselines
    out = {"models": {r["name"]: _block(r) | about[r["name"]] for r in table.to_dict("records")},
           "seed": params.base.seed, "seeds": b.seeds, "workers": n,
           "image_encoder": features.IMAGE_ENCODERS[b.image_encoder], "text_encoder": b.text_encoder,
           "test_rows": len(rows["test"]), "train_rows": len(rows["train"])}
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(_plain(out), indent=2) + "\n")
    per_seed.to_csv(p["table"], index=False)
    scores[SCORE_COLUMNS].to_parquet(p["scores"], index=False)
    return table


# --- the (baseline, seed) runs: in this process or in worker processes ------------------------------

_WORKER: dict = {}  # what every job reads: params, rows, items, dataset, vocab, progress (set by _start)


def _start(params: Params, rows: dict[str, pd.DataFrame], items: pd.DataFrame, dataset: str, progress: bool) -> None:
    """A worker's (or this process's) shared inputs, once; its torch threads."""
    _WORKER.update(params=params, rows=rows, items=items, dataset=dataset, vocab=Vocab(items[ITEM]), progress=progress)
    set_torch_threads(params.base.threads)


def _features(name: str) -> tuple[np.ndarray, dict, float]:
    """One feature model's frozen item features, about them, and the seconds they took."""
    w, start = _WORKER, time.perf_counter()
    feats, info = item_features(name, w["params"], w["items"], w["dataset"])
    return feats, info, round(time.perf_counter() - start, 2)


def _fit_seed(name: str, seed: int, feats: np.ndarray | None) -> dict:
    """One run: train `name` with `seed`, early-stop on valid, score the test rows."""
    w, start = _WORKER, time.perf_counter()
    model = make(name, w["params"], w["vocab"], feats, seed, progress=w["progress"])
    fitted = model.fit(w["rows"]["train"], w["rows"]["valid"])
    scores = long_table(w["rows"]["test"], model.score(w["rows"]["test"]))
    result = evaluate_table(scores, w["params"].eval.ks, both_ties=True)
    return {"result": result, "fitted": fitted, "seconds": round(time.perf_counter() - start, 2),
            "scores": scores[[GROUP, ITEM, metrics.LABEL, metrics.SCORE]]}


def _block(row: dict) -> dict:
    """A summary row as a JSON block: the means at the top level, the spreads under `std`."""
    return ({k: v for k, v in row.items() if not k.endswith("_std") and k != "name"}
            | {"std": {k.removesuffix("_std"): v for k, v in row.items() if k.endswith("_std")}})


KEEP = ("name", "seed", "n_groups", "n_rows", "seconds")  # not averaged as metrics


def summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline (in order): the mean over its seeds of every metric, `<metric>_std` (sample
    std; 0 for one run), n_seeds, seeds ("2024 2025 2026"), n_groups, n_rows and seconds (all seeds)."""
    by = per_seed.groupby("name", sort=False)
    cols = [c for c in per_seed.columns if c not in KEEP]
    return pd.concat([
        by[cols].mean(), by[cols].std(ddof=1).fillna(0.0).add_suffix("_std"),
        by["seed"].agg(n_seeds="count", seeds=lambda s: " ".join(map(str, s))),
        by[["n_groups", "n_rows"]].first(), by["seconds"].sum(),
    ], axis=1).reset_index()


def _plain(x):
    """JSON-ready: numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.generic):
        return x.item()
    return x
