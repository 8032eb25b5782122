"""Stage 02: summarise every item of a prepared dataset with the profile's VLM."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from msr_utils import image_labels, launch, models, summarize, users
from msr_utils.config import Params
from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, SPLITS
from msr_utils.paths import STAGE_01, artifacts, require
from msr_utils.rows import used_items


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    return {
        **a,
        "cache": a["cache"] / "item_summaries",
        "metrics": a["results"] / "item_summaries.json",
    }


def users_used_items(params: Params, dataset: str) -> set[str]:
    """The items of the rows stages 03-05 read (histories and candidates; msr_utils.rows)."""
    splits = {s: pd.read_parquet(require(paths(params, dataset)[s], STAGE_01)) for s in SPLITS}
    return used_items(params, users.load_rows(params, dataset), splits)


def real_images(items: pd.DataFrame, root: Path) -> dict[str, Path]:
    """{item_id: image file} of the items with a real image: no VLM reads them, so each enters as its
    ImageNet labels (image_labels.py); a placeholder card never (it is not an image of the item)."""
    real = items[items[IMAGE_PATH].fillna("").astype(str).ne("") & ~items[IMAGE_PLACEHOLDER].astype(bool)]
    return {str(item): root / path for item, path in zip(real[ITEM], real[IMAGE_PATH])}


def run(params: Params, dataset: str) -> tuple[pd.DataFrame, dict]:
    """Summaries for the dataset's items (cached, resumable); writes parquet + metrics.

    With item_summary.shard = 'i/n' (n > 1) only that part is generated into the cache and
    nothing else is written: merge the caches of all parts, then run again with '0/1'. With
    base.processes N > 1, on N processes (msr_utils.launch): the same files, no merge by hand."""
    cfg, p = params.item_summary, paths(params, dataset)
    if launch.wanted(params):
        return launch.run(params, "item_summaries", dataset)
    items = pd.read_parquet(p["items"])
    if cfg.items == "used":  # only what the LLM stages read (msr_utils.rows)
        items = items[items[ITEM].astype(str).isin(users_used_items(params, dataset))]
    if not cfg.title_only:  # no summary from a title alone: such an item enters later stages as its title
        items = items[items[IMAGE_PATH].notna() & ~items[IMAGE_PLACEHOLDER].astype(bool)]
    if cfg.limit:
        items = items.head(cfg.limit)
    i, n = (int(x) for x in cfg.shard.split("/"))
    loaded = models.load_profile(params, "vlm")
    labels = image_labels.top_labels(real_images(items, params.root)) if loaded.kind == "lm" else None
    summaries, stats = summarize.summarize_items(
        items, loaded, p["cache"], image_root=params.root,
        dataset_kind=json.loads(p["info"].read_text())["noun"], batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens, seed=params.base.seed, shard=(i, n) if n > 1 else None,
        wording=cfg.prompt,
        placeholder_images=cfg.placeholder_images, labels=labels)
    placeholders = set(items.loc[items[IMAGE_PLACEHOLDER], ITEM])
    stats["placeholder_images_used"] = int((summaries[summarize.IMAGE_USED]
                                            & summaries[ITEM].isin(placeholders)).sum())
    stats["model"] = loaded.model_ref
    if n > 1 or not launch.is_main():  # a part by hand writes nothing; of N processes the main one writes
        return summaries, stats
    p["item_summaries"].parent.mkdir(parents=True, exist_ok=True)
    summaries.to_parquet(p["item_summaries"], index=False)
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(stats, indent=2) + "\n")
    return summaries, stats
