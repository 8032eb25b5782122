"""Stage 06: train every baseline in `baselines.models` on the train rows, early-stop on valid, score
the test rows' candidates and compute the same metrics as stage 05 (`metrics.evaluate`, one group
per row, `eval.ks`, the first `eval.limit` test rows when set).

Writes results/<ds>/baselines.json (DVC metrics: one block per baseline + the encoders used) and
results/<ds>/baselines.csv (the table `run` returns). Frozen features are cached under
data/cache/<ds>/baselines/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

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


def build(name: str, params: Params, items: pd.DataFrame, vocab: Vocab, dataset: str):
    """(baseline, info about its inputs) for one name of baselines.models."""
    cfg, b, p = TrainConfig.from_params(params), params.baselines, paths(params, dataset)
    if name == "pop":
        return pop.Pop(), {}
    if name == "gru4rec":
        return gru4rec.make(vocab, cfg, name=name), {}
    if name == "sasrec":
        return sasrec.make(vocab, cfg, name=name), {}
    if name == "gru4rec_image":
        feats, info = features.image_features(items, params.root, b.image_encoder, b.image_size,
                                              b.feature_batch_size, p["cache"])
    elif name == "gru4rec_summary":
        texts, missing = summary_texts(items, p["item_summaries"])
        feats, info = features.text_features(texts, b.text_encoder, b.feature_batch_size, p["cache"], "summary")
        info["summary_missing"] = missing  # items scored by their title instead
    elif name == "gru4rec_title":
        feats, info = features.text_features(items[TITLE].fillna("").astype(str).tolist(), b.text_encoder,
                                             b.feature_batch_size, p["cache"], "title")
    else:
        raise ValueError(f"unknown baseline {name!r}")
    return gru4rec.make(vocab, cfg, feats, name=name), info


def run(params: Params, dataset: str) -> pd.DataFrame:
    """Every requested baseline on one dataset; one row per baseline; writes json + csv."""
    with torch_threads(params.baselines.threads):
        return _run(params, dataset)


def _run(params: Params, dataset: str) -> pd.DataFrame:
    p, ks = paths(params, dataset), params.eval.ks
    rows = {s: pd.read_parquet(p[s]) for s in SPLITS}
    if params.eval.limit:
        rows["test"] = rows["test"].head(params.eval.limit)
    items = pd.read_parquet(p["items"])
    vocab = Vocab(items[ITEM])
    table, blocks = [], {}
    for name in params.baselines.models:
        start = time.perf_counter()
        model, info = build(name, params, items, vocab, dataset)
        feature_seconds = time.perf_counter() - start
        info |= model.fit(rows["train"], rows["valid"])
        scores = model.score(rows["test"])
        result = evaluate_rows(rows["test"], scores, ks)
        seconds = time.perf_counter() - start
        table.append({"name": name, **result, "seconds": round(seconds, 2)})
        blocks[name] = {**result, **info, "seconds": round(seconds, 2),
                        "feature_seconds": round(feature_seconds, 2)}
    df = pd.DataFrame(table)
    b = params.baselines
    out = {"models": blocks, "seed": params.base.seed, "image_encoder": features.IMAGE_ENCODERS[b.image_encoder],
           "text_encoder": b.text_encoder, "test_rows": len(rows["test"]), "train_rows": len(rows["train"])}
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(_plain(out), indent=2) + "\n")
    df.to_csv(p["table"], index=False)
    return df


def _plain(x):
    """JSON-ready: numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.generic):
        return x.item()
    return x
