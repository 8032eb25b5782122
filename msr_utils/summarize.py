"""Batched, cached generation: item summaries now, user summaries later (same engine).

`generate_cached` runs requests through the model in length-sorted, left-padded batches (greedy
unless asked otherwise) and appends each finished batch to a `ShardCache`, so a run killed at any
point (even kill -9) resumes without redoing or losing an item. `summarize_items` builds the
item-summary requests: image + title prompt, or the title-only prompt when the image is missing,
a placeholder or unreadable (counted in stats, never a crash).

Empty generations: when the decoded answer is empty after stripping, the record gets
EMPTY_FALLBACK (for items: the title), `empty=True`, and is counted in stats["empty"].
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from msr_utils import prompts
from msr_utils.cache import KEY, MODEL, PROMPT_HASH, ShardCache
from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TITLE, check_columns
from msr_utils.models import LoadedModel

SUMMARY, IMAGE_USED, EMPTY = "summary", "image_used", "empty"
ITEM_SUMMARY_COLUMNS = [ITEM, SUMMARY, MODEL, PROMPT_HASH, IMAGE_USED, EMPTY]
EMPTY_FALLBACK = "{title}"  # what an empty item summary is replaced by (the item's title)


@dataclass
class Request:
    """One generation. With `image_path`, `messages` holds an image slot; if that image cannot be
    read, `text_messages` / `text_hash` (the text-only prompt) are used instead."""
    key: str
    messages: list[dict]
    prompt_hash: str
    fallback: str
    image_path: Path | None = None
    text_messages: list[dict] | None = None
    text_hash: str | None = None


def summarize_items(items: pd.DataFrame, loaded: LoadedModel, cache_dir: str | Path, *,
                    image_root: str | Path | None = None, dataset_kind: str = "video",
                    batch_size: int = 8, max_new_tokens: int = 128, do_sample: bool = False,
                    temperature: float | None = None, top_p: float | None = None, seed: int = 0,
                    shard: tuple[int, int] | None = None, templates: dict[bool, str] | None = None,
                    wording: str = "ours", placeholder_images: bool = False,
                    progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Summarise each unique item (image + title, or title only) with `loaded`.

    items: columns item_id, title, image_path (relative to image_root, or None), image_placeholder.
    shard=(i, n): only items whose stable hash falls in part i of n (merge the caches afterwards).
    wording: "ours" (the title in the image prompt) | "official" (the official cover prompt).
    templates: {with_image: template} overrides of the prompts.py templates (experiments, tests).
    placeholder_images: feed placeholder cards to the VLM like real images (a pipeline check of the
    image path on the tiny profile); False treats them as missing (title-only prompt).
    Returns (DataFrame of ITEM_SUMMARY_COLUMNS in input order, stats dict).
    """
    check_columns(items, [ITEM, TITLE, IMAGE_PATH, IMAGE_PLACEHOLDER], "summarize_items(items)")
    df = items.assign(**{ITEM: items[ITEM].astype(str)}).drop_duplicates(ITEM, keep="first")
    if shard is not None:
        df = df[df[ITEM].map(lambda k: in_shard(k, shard))]
    gen = generation_kwargs(max_new_tokens, do_sample, temperature, top_p)
    templates = {w: (templates or {}).get(w) or prompts.item_summary_template(dataset_kind, w, wording)
                 for w in (True, False)}
    hashes = {w: prompts.prompt_hash([t, json.dumps(gen, sort_keys=True)]) for w, t in templates.items()}
    root = Path(image_root) if image_root is not None else Path()
    if do_sample:
        torch.manual_seed(seed)  # sampled runs are seeded (reproducible for an uninterrupted run)

    requests = []
    for item_id, title, path, placeholder in zip(df[ITEM], df[TITLE], df[IMAGE_PATH], df[IMAGE_PLACEHOLDER]):
        title = "" if pd.isna(title) else str(title)
        text_only = prompts.item_summary_messages(title, templates[False], False)
        fallback = EMPTY_FALLBACK.format(title=title)
        placeholder = False if pd.isna(placeholder) else bool(placeholder)
        if loaded.kind == "vlm" and isinstance(path, str) and path and (placeholder_images or not placeholder):
            requests.append(Request(item_id, prompts.item_summary_messages(title, templates[True], True),
                                    hashes[True], fallback, image_path=root / path,
                                    text_messages=text_only, text_hash=hashes[False]))
        else:
            requests.append(Request(item_id, text_only, hashes[False], fallback))

    records, stats = generate_cached(requests, loaded, ShardCache(cache_dir), batch_size=batch_size,
                                     gen_kwargs=gen, progress=progress, desc="item summaries")
    out = records.rename(columns={KEY: ITEM})[ITEM_SUMMARY_COLUMNS].reset_index(drop=True)
    stats["title_only"] = int((~out[IMAGE_USED]).sum())
    return out, stats


def generate_cached(requests: list[Request], loaded: LoadedModel, cache: ShardCache, *,
                    batch_size: int, gen_kwargs: dict, progress: bool = True,
                    desc: str = "generate") -> tuple[pd.DataFrame, dict]:
    """Generate every request not cached yet (under either of its hashes), one shard per batch.
    Returns (one cached record per request, in request order; stats)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    start = time.perf_counter()
    model_name = loaded.model_ref
    hashes = {h for r in requests for h in (r.prompt_hash, r.text_hash) if h}
    cached = cache.read(model_name)
    cached = cached[cached[PROMPT_HASH].isin(hashes)]
    done = set(zip(cached[KEY], cached[PROMPT_HASH]))
    pending = [r for r in requests if (r.key, r.prompt_hash) not in done and (r.key, r.text_hash) not in done]
    rendered = {r.key: render(loaded, r.messages) for r in pending}
    # Length-sorted batches (image prompts together) keep padding small; ties by key, stable.
    pending.sort(key=lambda r: (r.image_path is None, len(rendered[r.key]), r.key))
    stats = {"items": len(requests), "generated": 0, "cached": len(requests) - len(pending),
             "empty": 0, "image_errors": 0}

    bar = tqdm(total=len(pending), desc=desc, unit="item", disable=not progress)
    new_rows: list[dict] = []
    for batch in batches(pending, [len(rendered[r.key]) for r in pending], batch_size):
        texts, images, used = [], [], []
        for r in batch:
            image = load_image(r.image_path) if r.image_path is not None else None
            stats["image_errors"] += int(r.image_path is not None and image is None)
            if image is None and r.text_messages is not None:
                texts.append(render(loaded, r.text_messages))
            else:
                texts.append(rendered[r.key])
            images.append(image)
            used.append(image is not None)
        answers = generate_batch(loaded, texts, images, gen_kwargs)
        rows = []
        for r, answer, image_used in zip(batch, answers, used):
            empty = answer == ""
            rows.append({KEY: r.key, MODEL: model_name,
                         PROMPT_HASH: r.prompt_hash if image_used or r.text_hash is None else r.text_hash,
                         SUMMARY: r.fallback if empty else answer, IMAGE_USED: image_used, EMPTY: empty})
        cache.append(rows)  # one atomic shard per batch: the resume point
        new_rows += rows
        stats["generated"] += len(batch)
        bar.update(len(batch))
    bar.close()

    records = pd.concat([df for df in (cached, pd.DataFrame(new_rows)) if not df.empty]
                        or [pd.DataFrame(columns=[KEY, MODEL, PROMPT_HASH, SUMMARY, IMAGE_USED, EMPTY])])
    # A key cached under both hashes (merged runs) keeps its image summary.
    records = records.sort_values(IMAGE_USED, ascending=False, kind="stable").drop_duplicates(KEY)
    order = {r.key: n for n, r in enumerate(requests)}
    records = records[records[KEY].isin(order)].sort_values(KEY, key=lambda s: s.map(order))
    missing = len(order) - len(records)
    if missing:
        raise RuntimeError(f"cache {cache.root}: {missing} request(s) have no record after generation")
    stats["empty"] = int(records[EMPTY].sum())
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return records.reset_index(drop=True), stats


def batches(requests: list, lengths: list[int], batch_size: int) -> list[list]:
    """Consecutive (length-sorted) requests in batches of at most `batch_size`, cut sooner where
    the batch's padded size (rows x its longest prompt) would pass batch_size x twice the median
    length: a batch of outliers (one MicroLens title has 6,293 characters) needs no more memory than
    a typical batch."""
    if not requests:
        return []
    budget = batch_size * 2 * float(np.median(lengths))
    out, start = [], 0
    for i, length in enumerate(lengths):
        rows = i - start + 1
        if rows > batch_size or (rows > 1 and rows * max(lengths[start:i + 1]) > budget):
            out.append(requests[start:i])
            start = i
    return out + [requests[start:]]


def generate_batch(loaded: LoadedModel, texts: list[str], images: list[Image.Image | None],
                   gen_kwargs: dict) -> list[str]:
    """Greedy/sampled generation for one left-padded batch; returns stripped answers.
    Backend hook: an optional vLLM backend would replace this function (same inputs/outputs)."""
    bos = loaded.tokenizer.bos_token
    add_special = not (bos and texts[0].startswith(bos))  # chat templates usually add BOS themselves
    present = [im for im in images if im is not None]
    if loaded.kind == "vlm":
        inputs = loaded.processor(text=texts, images=present or None, padding=True,
                                  add_special_tokens=add_special, return_tensors="pt")
    else:
        inputs = loaded.tokenizer(texts, padding=True, add_special_tokens=add_special, return_tensors="pt")
    inputs = inputs.to(loaded.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, **gen_kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in loaded.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generation_kwargs(max_new_tokens: int, do_sample: bool = False, temperature: float | None = None,
                      top_p: float | None = None) -> dict[str, Any]:
    """generate() settings; they are part of the cache hash, so changing one regenerates."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if not do_sample and (temperature is not None or top_p is not None):
        raise ValueError("temperature/top_p are sampling parameters: pass do_sample=True with them")
    gen: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample)}
    if temperature is not None:
        gen["temperature"] = float(temperature)
    if top_p is not None:
        gen["top_p"] = float(top_p)
    return gen


def render(loaded: LoadedModel, messages: list[dict]) -> str:
    """Prompt text of `messages` through the model's chat template, ready for generation.
    Text-only LMs get plain string contents (their templates may not take content lists)."""
    if loaded.kind == "lm":
        messages = prompts.text_contents(messages)
    return loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_image(path: Path) -> Image.Image | None:
    """RGB image, or None when the file is missing, unreadable or corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):  # PIL raises these for bad files
        return None


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Stable partition of keys into n parts (sha256 of the key, independent of the run)."""
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard={shard}: expected (i, n) with 0 <= i < n")
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) % n == i
