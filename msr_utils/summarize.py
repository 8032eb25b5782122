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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from msr_utils import launch, prompts
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
                    labels: dict[str, list[str]] | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Summarise each unique item (image + title, or title only) with `loaded`.

    items: columns item_id, title, image_path (relative to image_root, or None), image_placeholder.
    shard=(i, n): only items whose stable hash falls in part i of n (merge the caches afterwards).
    wording: "ours" (the title in the image prompt) | "official" (the official cover prompt).
    templates: {with_image: template} overrides of the prompts.py templates (experiments, tests).
    placeholder_images: feed placeholder cards to the VLM like real images (a pipeline check of the
    image path on the tiny profile); False treats them as missing (title-only prompt).
    labels: {item_id: ImageNet labels of its real image} (image_labels.py) for an LM (no VLM): those
    items get the title + labels prompt (prompts.ITEM_SUMMARY_LABELS) instead of the title-only one.
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
    labels = labels or {}
    labelled = prompts.ITEM_SUMMARY_LABELS[dataset_kind] if labels else None
    root = Path(image_root) if image_root is not None else Path()

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
        elif item_id in labels:  # an LM: the real image enters as its labels (never a placeholder's)
            requests.append(Request(item_id, prompts.item_summary_messages(title, labelled, False, labels[item_id]),
                                    prompts.prompt_hash([labelled, json.dumps(gen, sort_keys=True), *labels[item_id]]),
                                    fallback))  # the labels in the hash: another cover, another summary
        else:
            requests.append(Request(item_id, text_only, hashes[False], fallback))

    records, stats = generate_cached(requests, loaded, ShardCache(cache_dir), batch_size=batch_size,
                                     gen_kwargs=gen, progress=progress, desc="item summaries", seed=seed)
    out = records.rename(columns={KEY: ITEM})[ITEM_SUMMARY_COLUMNS].reset_index(drop=True)
    stats["title_only"] = int((~out[IMAGE_USED]).sum())
    stats["image_labels"] = int(out[ITEM].isin(labels).sum())  # of those: title + the image's ImageNet labels
    return out, stats


def generate_cached(requests: list[Request], loaded: LoadedModel, cache: ShardCache, *,
                    batch_size: int, gen_kwargs: dict, progress: bool = True,
                    desc: str = "generate", seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Generate every request not cached yet (under either of its hashes), one shard per batch.
    Returns (one cached record per request, in request order; stats). Sampling draws from a seed per
    (seed, request key, step) (`KeyedSampling`).

    The batches are cut from all requests (length-sorted), each generating its uncached requests, so a
    resumed run (each batch is whole in the cache, or absent) and N processes (batch i on rank i mod N,
    msr_utils.launch) run the very batches of one uninterrupted process: the same greedy bytes."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    start = time.perf_counter()
    model_name = loaded.model_ref
    rank, size = launch.world()
    hashes = {h for r in requests for h in (r.prompt_hash, r.text_hash) if h}
    cached = cache.read(model_name)
    cached = cached[cached[PROMPT_HASH].isin(hashes) & cached[KEY].isin({r.key for r in requests})]
    if size > 1:  # what any process's cache holds (machines need not share a disk)
        cached = pd.concat(launch.gather(cached)).drop_duplicates([KEY, PROMPT_HASH])
    done = set(zip(cached[KEY], cached[PROMPT_HASH]))
    pending = {r.key for r in requests if (r.key, r.prompt_hash) not in done and (r.key, r.text_hash) not in done}
    rendered = {r.key: render(loaded, r.messages) for r in requests} if pending else {}  # all cached: no plan
    # Length-sorted batches (image prompts together) keep padding small; ties by key, stable.
    ordered = sorted(requests, key=lambda r: (r.image_path is None, len(rendered[r.key]), r.key)) if pending else []
    work = [todo for batch in batches(ordered, [len(rendered[r.key]) for r in ordered], batch_size)
            if (todo := [r for r in batch if r.key in pending])][rank::size]
    stats = {"items": len(requests), "generated": len(pending), "cached": len(requests) - len(pending),
             "empty": 0, "image_errors": 0}

    bar = tqdm(total=sum(map(len, work)), desc=desc, unit="item", disable=not progress)
    new_rows, written = [], []
    for batch in work:
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
        answers = generate_batch(loaded, texts, images, gen_kwargs, keys=[r.key for r in batch], seed=seed)
        rows = []
        for r, answer, image_used in zip(batch, answers, used):
            empty = answer == ""
            rows.append({KEY: r.key, MODEL: model_name,
                         PROMPT_HASH: r.prompt_hash if image_used or r.text_hash is None else r.text_hash,
                         SUMMARY: r.fallback if empty else answer, IMAGE_USED: image_used, EMPTY: empty})
        written.append(cache.append(rows))  # one atomic shard per batch: the resume point
        new_rows += rows
        bar.update(len(batch))
    bar.close()
    if size > 1:  # every process's new records, in rank order
        parts = launch.gather((new_rows, stats["image_errors"], [str(p) for p in written]))
        new_rows = [row for rows, _, _ in parts for row in rows]
        stats["image_errors"] = sum(errors for _, errors, _ in parts)
        if rank == 0:  # another machine's shards, not on this disk: kept here too, so a rerun here generates nothing
            cache.append([row for rows, _, paths in parts[1:] if not all(map(os.path.isfile, paths)) for row in rows])

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
                   gen_kwargs: dict, keys: list[str] | None = None, seed: int = 0) -> list[str]:
    """Greedy/sampled generation for one left-padded batch; returns stripped answers. Sampled
    (gen_kwargs do_sample) rows draw from KeyedSampling(keys, seed): a row's text depends on its key,
    not on its batch or process. Backend hook: an optional vLLM backend would replace this function."""
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
    gen = gen_kwargs
    if gen_kwargs.get("do_sample"):
        if keys is None or len(keys) != len(texts):
            raise ValueError("sampled generation needs one key per text (generate_batch(..., keys=...))")
        gen = keyed_sampling(loaded.model, gen_kwargs, keys, seed, inputs["input_ids"].shape[1])
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, **gen)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in loaded.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class KeyedSampling(LogitsProcessor):
    """Sampling as an exponential race: after the temperature / top-k / top-p warpers, the next token is
    argmax(p_i / E_i) with E ~ Exp(1), an exact draw from p. Each row's E comes from a generator seeded
    by (seed, key, step), so a text depends on its request's key alone: not on the batch, the process
    or the order of the run (the same with 1 or N processes, resumed or not)."""

    def __init__(self, keys: list[str], seed: int, prompt_length: int):
        self.keys, self.seed, self.prompt_length = keys, seed, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        race = torch.stack([torch.empty(scores.shape[1], dtype=torch.float64).exponential_(
            generator=torch.Generator().manual_seed(stable_seed(self.seed, key, step))) for key in self.keys])
        return torch.log_softmax(scores.float(), dim=-1) - race.log().to(scores.device, torch.float32)


def keyed_sampling(model, gen_kwargs: dict, keys: list[str], seed: int, prompt_length: int) -> dict:
    """generate() settings that sample with KeyedSampling: greedy over the warped, raced logits. The
    warpers are those do_sample would apply (temperature, the model's top-k, top-p)."""
    gen = {k: v for k, v in gen_kwargs.items() if k not in ("do_sample", "temperature", "top_p")}
    warpers = []
    if gen_kwargs.get("temperature") not in (None, 1.0):
        warpers.append(TemperatureLogitsWarper(gen_kwargs["temperature"]))
    if getattr(model.generation_config, "top_k", None):
        warpers.append(TopKLogitsWarper(model.generation_config.top_k))
    if gen_kwargs.get("top_p") not in (None, 1.0):
        warpers.append(TopPLogitsWarper(gen_kwargs["top_p"]))
    return {**gen, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
            "logits_processor": LogitsProcessorList([*warpers, KeyedSampling(keys, seed, prompt_length)])}


def stable_seed(*parts) -> int:
    """A 63-bit seed from its parts (sha256: the same in every process and run)."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode("utf-8")).hexdigest()[:15], 16)


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
