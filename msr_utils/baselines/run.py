"""Stage 06: train every baseline in `baselines.models` on the train rows, early-stop on valid, score
the test rows' candidates and compute the same metrics as stage 05 (`metrics.evaluate`, one group
per row, `eval.ks`, the first `eval.limit` test rows when set), plus HR/NDCG/MRR@K expected under a
random order of tied candidates (`<metric>_expected`) and the share of rows with a tied positive.

Each neural baseline trains once per seed (`baselines.seeds`: base.seed, base.seed + 1, ...); its
frozen item features are computed once (cached under data/cache/<ds>/baselines/). Pop has no
randomness: it runs once. `run` returns one row per baseline: the mean over its seeds, `<metric>_std`
(sample std; 0 for one run) and n_seeds.

Writes results/<ds>/baselines.csv (one row per baseline and seed) and results/<ds>/baselines.json
(DVC metrics: per baseline the mean, `std` and each seed's run under `runs`; the encoders used).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from msr_utils.baselines import features, gru4rec, pop, sasrec
from msr_utils.baselines.common import Vocab, evaluate_rows
from msr_utils.baselines.train import TrainConfig, torch_threads
from msr_utils.config import Params
from msr_utils.data.schema import ITEM, SPLITS, TITLE
from msr_utils.paths import STAGE_02, artifacts, require


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    return {
        **a,
        "cache": a["cache"] / "baselines",
        "metrics": a["results"] / "baselines.json",
        "table": a["results"] / "baselines.csv",
    }


def summary_texts(items: pd.DataFrame, path: Path) -> tuple[list[str], int]:
    """Each item's stage-02 summary (its title where it has none); (texts, number of fallbacks)."""
    s = pd.read_parquet(require(path, STAGE_02, "drop gru4rec_summary from baselines.models"), columns=[ITEM, "summary"]).drop_duplicates(ITEM).set_index(ITEM)["summary"]
    got = items[ITEM].map(s)
    missing = got.isna() | (got.astype(str).str.strip() == "")
    return items[TITLE].where(missing, got).fillna("").astype(str).tolist(), int(missing.sum())


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
        return feats, info | {"summary_missing": missing}  # items scored by their title instead
    if name == "gru4rec_title":
        return features.text_features(items[TITLE].fillna("").astype(str).tolist(), b.text_encoder,
                                      b.feature_batch_size, p["cache"], "title")
    raise ValueError(f"unknown baseline {name!r}")


def make(name: str, params: Params, vocab: Vocab, feats: np.ndarray | None, seed: int | None = None):
    """A fresh, untrained baseline seeded with `seed` (default base.seed)."""
    cfg = TrainConfig.from_params(params, seed)
    if name == "pop":
        return pop.Pop()
    if name == "sasrec":
        return sasrec.make(vocab, cfg, name=name)
    return gru4rec.make(vocab, cfg, feats, name=name)


def build(name: str, params: Params, items: pd.DataFrame, vocab: Vocab, dataset: str, seed: int | None = None):
    """(baseline, info about its inputs) for one name of baselines.models."""
    feats, info = item_features(name, params, items, dataset)
    return make(name, params, vocab, feats, seed), info


def run(params: Params, dataset: str) -> pd.DataFrame:
    """Every requested baseline on one dataset, every seed; one row per baseline (mean over seeds,
    spread); writes json + csv."""
    with torch_threads(params.baselines.threads):
        return _run(params, dataset)


def _run(params: Params, dataset: str) -> pd.DataFrame:
    p, ks = paths(params, dataset), params.eval.ks
    rows = {s: pd.read_parquet(p[s]) for s in SPLITS}
    if params.eval.limit:
        rows["test"] = rows["test"].head(params.eval.limit)
    items = pd.read_parquet(p["items"])
    vocab = Vocab(items[ITEM])
    per_seed, about = [], {}
    bar = tqdm(total=sum(len(seeds(params, n)) for n in params.baselines.models), desc="baselines x seeds")
    for name in params.baselines.models:
        start = time.perf_counter()
        feats, info = item_features(name, params, items, dataset)
        about[name] = {**info, "feature_seconds": round(time.perf_counter() - start, 2), "runs": {}}
        for seed in seeds(params, name):
            start = time.perf_counter()
            model = make(name, params, vocab, feats, seed)
            fitted = model.fit(rows["train"], rows["valid"])
            result = evaluate_rows(rows["test"], model.score(rows["test"]), ks, both_ties=True)
            seconds = round(time.perf_counter() - start, 2)
            per_seed.append({"name": name, "seed": seed, **result, "seconds": seconds})
            about[name]["runs"][str(seed)] = {**result, **fitted, "seconds": seconds}
            bar.set_postfix_str(f"{name} seed {seed}: auc {result['auc']:.3f}")
            bar.update()
    bar.close()
    per_seed = pd.DataFrame(per_seed)
    table = summary(per_seed)
    b = params.baselines
    out = {"models": {r["name"]: _block(r) | about[r["name"]] for r in table.to_dict("records")},
           "seed": params.base.seed, "seeds": b.seeds,
           "image_encoder": features.IMAGE_ENCODERS[b.image_encoder], "text_encoder": b.text_encoder,
           "test_rows": len(rows["test"]), "train_rows": len(rows["train"])}
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(_plain(out), indent=2) + "\n")
    per_seed.to_csv(p["table"], index=False)
    return table


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
