"""Stage 01 end to end: raw files -> canonical tables -> k-core -> first N users -> split
-> negatives -> parquet + dataset.json + stage metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from msr_utils.config import ConfigError, Params
from msr_utils.data import amazon, download, filter, images, microlens, registry, split
from msr_utils.data.schema import (DESCRIPTION, IMAGE_PATH, IMAGE_PLACEHOLDER, IMAGE_URL, ITEM, SPLITS,
                                   TITLE, USER, DataError)


@dataclass
class Prepared:
    interactions: pd.DataFrame
    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    info: dict  # resolved settings, written as dataset.json
    metrics: dict


def settings(params: Params, name: str) -> dict:
    """The dataset's resolved knobs: params.yaml where set, else the paper's defaults."""
    info, d = registry.get(name), params.data
    return {
        "dataset": name, "kind": info.kind, "noun": info.noun, "source": d.source,
        "protocol": d.protocol, "seed": params.base.seed, "limit_users": d.limit_users,
        "kcore_user": d.kcore_user or info.kcore_user, "kcore_item": d.kcore_item or info.kcore_item,
        "paper_n_items": d.paper_n_items or info.paper_n_items, "max_history": d.max_history,
        "split_ratio": list(d.split_ratio), "neg_train": d.neg_train, "neg_eval": d.neg_eval,
    }


def source_dir(params: Params, name: str) -> Path:
    info = registry.get(name)
    if params.data.source == "sample":
        if not info.has_sample:
            raise ConfigError(f"data.source = 'sample': no sample ships for {name!r} (only for "
                              f"{[n for n, i in registry.DATASETS.items() if i.has_sample]}); "
                              "use data.source: full with the files in data.raw_dir, or data.download: true")
        return params.path(params.data.sample_dir) / name
    folder = params.path(params.data.raw_dir) / name
    if params.data.download:
        download.fetch_dataset(name, folder)
    return folder


def load_raw(params: Params, name: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(interactions, items, timestamp_unit) in the canonical schema."""
    folder, info = source_dir(params, name), registry.get(name)
    if info.kind == "microlens":
        return microlens.load(folder, params.root)
    reviews = _first_existing(folder, [f"{info.category}.jsonl.gz", f"{info.category}.jsonl"])
    meta = _first_existing(folder, [f"meta_{info.category}.jsonl.gz", f"meta_{info.category}.jsonl"])
    return amazon.load_reviews(reviews), amazon.load_meta(meta), "s"


def _first_existing(folder: Path, names: list[str]) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise DataError(f"{folder}: none of {names} found; set data.download: true to fetch them")


def attach_images(items: pd.DataFrame, params: Params, name: str, out_dir: Path) -> pd.DataFrame:
    """Real images where present (downloaded when data.download_images), placeholders elsewhere."""
    items = items.copy()
    if params.data.download_images and params.data.source == "full":
        want = items[items[IMAGE_PATH].isna() & items[IMAGE_URL].notna()]
        got = download.fetch_images(dict(zip(want[ITEM], want[IMAGE_URL])),
                                    params.path(params.data.raw_dir) / name / "images")
        ok = got[got["ok"]].set_index(ITEM)["path"]
        hit = items[ITEM].isin(ok.index)
        items.loc[hit, IMAGE_PATH] = [str(Path(p).resolve().relative_to(params.root.resolve()))
                                      for p in ok.loc[items.loc[hit, ITEM]]]
    return images.fill_placeholders(items, out_dir / "images", params.root)


def prepare(params: Params, name: str) -> Prepared:
    start = time.perf_counter()
    cfg = settings(params, name)
    raw, items, ts_unit = load_raw(params, name)
    user_order = pd.Series(pd.unique(raw[USER]))
    df, repeats = filter.order_and_dedupe(raw)
    df, passes = filter.kcore(df, cfg["kcore_user"], cfg["kcore_item"])
    df = filter.first_users(df, cfg["limit_users"], user_order)
    if df.empty:
        raise DataError(f"{name}: nothing left after {cfg['kcore_user']}/{cfg['kcore_item']}-core "
                        "(data.kcore_user / data.kcore_item too high?)")

    if cfg["protocol"] == "paper":
        rows = split.paper_rows(df, cfg["paper_n_items"], cfg["split_ratio"], cfg["seed"])
    else:
        rows = split.loo_rows(df, cfg["max_history"])
    n_neg = {"train": cfg["neg_train"], "valid": cfg["neg_eval"], "test": cfg["neg_eval"]}
    rows = split.add_candidates(rows, df, n_neg, cfg["seed"])

    kept = pd.DataFrame({ITEM: sorted(df[ITEM].unique())})
    kept = kept.merge(items.drop_duplicates(ITEM), on=ITEM, how="left", validate="one_to_one")
    missing_meta = int(kept[TITLE].isna().sum())
    kept[TITLE] = kept[TITLE].fillna("")
    out_dir = params.path(params.data.out_dir) / name
    kept = attach_images(kept, params, name, out_dir)

    cfg["timestamp_unit"] = ts_unit
    seq_len = df.groupby(USER).size()
    metrics = {
        "raw_users": int(raw[USER].nunique()), "raw_interactions": len(raw),
        "repeats_dropped": repeats, "kcore_passes": passes,
        "users": int(df[USER].nunique()), "items": len(kept), "interactions": len(df),
        "density": len(df) / (df[USER].nunique() * len(kept)),
        "seq_len_min": int(seq_len.min()), "seq_len_median": float(seq_len.median()),
        "seq_len_mean": float(seq_len.mean()), "seq_len_max": int(seq_len.max()),
        **{f"rows_{s}": len(rows[s]) for s in SPLITS},
        "items_missing_meta": missing_meta,
        "images_real": int((~kept[IMAGE_PLACEHOLDER]).sum()),
        "images_placeholder": int(kept[IMAGE_PLACEHOLDER].sum()),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return Prepared(df, kept[[ITEM, TITLE, DESCRIPTION, IMAGE_PATH, IMAGE_URL, IMAGE_PLACEHOLDER]],
                    rows, cfg, metrics)


def write(result: Prepared, out_dir: Path, metrics_file: Path) -> None:
    """Parquet tables + dataset.json in out_dir; the metrics JSON where DVC expects it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.interactions.to_parquet(out_dir / "interactions.parquet", index=False)
    result.items.to_parquet(out_dir / "items.parquet", index=False)
    for name, part in result.splits.items():
        part.to_parquet(out_dir / f"{name}.parquet", index=False)
    (out_dir / "dataset.json").write_text(json.dumps(result.info, indent=2) + "\n")
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(result.metrics, indent=2) + "\n")


def run(params: Params, name: str) -> Prepared:
    """What the notebook calls: prepare one dataset and write its outputs."""
    result = prepare(params, name)
    write(result, params.path(params.data.out_dir) / name, metrics_path(params, name))
    return result


def metrics_path(params: Params, name: str) -> Path:
    return params.root / "results" / name / "data_prep.json"
