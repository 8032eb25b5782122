"""Stage 03: user-preference summaries, block by block (the paper's recurrent summarisation).

A split row's prefix is the user's sequence strictly before its target (`sequence[:target_pos]`).
It is cut into blocks aligned from the sequence start: `block_size` items (fixed), or time
sessions (a gap > `session_gap` seconds starts a block; at most `max_block_size` items each). A text
LLM reads item titles + item summaries: s_1 = LLM(block_1), s_k = LLM(s_{k-1}, block_k); a row's
preference is the summary after its last block, which ends right before its target.

A block state is the summary after the block ending at `upto_position`. Its cache key is
`user@end/blocking:digest`, the digest chained over the block texts so far (so a changed item
summary, protocol or block size is a different state). Because blocks are aligned from the start, a
longer prefix of a user shares every full block of a shorter one: each distinct state is generated
once, and step k runs the k-th states of all users as one batched series (`summarize.generate_cached`,
one cache shard per batch, so a killed run resumes). `mode: direct` (ablation) sends the whole prefix
in one prompt, one state per distinct prefix. `mode: titles` (the TALLRec-style text-only baseline)
uses no LLM: the preference is the prefix's titles, numbered, oldest first (prompts.user_titles_text).
`block_size: 0` is one block holding the whole prefix (the "all" point of the block-size sweep).
An empty prefix gets prompts.USER_EMPTY_HISTORY.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from msr_utils import launch, models, prompts, summarize
from msr_utils.cache import KEY, MODEL, PROMPT_HASH, ShardCache
from msr_utils.config import ConfigError, Params, UserSummary
from msr_utils.data.schema import (HISTORY, ITEM, SPLITS, TARGET_POS, TIME, TITLE, USER, DataError,
                                   check_columns)
from msr_utils.models import LoadedModel
from msr_utils.paths import STAGE_02, artifacts, require
from msr_utils.rows import PREFIX, SPLIT, keep_used

SUMMARY = summarize.SUMMARY
TIMES = "times"  # SPLIT, PREFIX: msr_utils.rows (the prefix table's columns)
UPTO, BLOCK_INDEX, PREFERENCE = "upto_position", "block_index", "preference"
USER_SUMMARY_COLUMNS = [USER, UPTO, BLOCK_INDEX, SUMMARY, MODEL, PROMPT_HASH]
PREFERENCE_COLUMNS = [SPLIT, USER, TARGET_POS, PREFERENCE]


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    return {
        **a,
        "cache": a["cache"] / "user_summaries",
        "metrics": a["results"] / "user_summaries.json",
    }


# --- blocks ----------------------------------------------------------------------------------------

def block_ends(n: int, block_size: int) -> list[int]:
    """Exclusive ends of the fixed blocks of an n-item prefix: [b, 2b, ..., n] (last may be short);
    block_size 0 = one block holding the whole prefix: [n]."""
    if block_size < 0:
        raise ValueError(f"user_summary.block_size={block_size}: must be >= 1, or 0 for the whole history")
    if block_size == 0:
        return [n] if n else []
    return [*range(block_size, n, block_size), n] if n else []


def session_ends(times: list[int], gap: int, max_block: int) -> list[int]:
    """Exclusive block ends: a new block where the time gap exceeds `gap` seconds or the block
    already holds `max_block` items. Depends only on earlier items, so prefixes share blocks."""
    ends, start = [], 0
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > gap or i - start == max_block:
            ends.append(i)
            start = i
    return ends + [len(times)] if times else []


def prefix_ends(times: list[int], cfg: UserSummary) -> list[int]:
    """Block ends of one prefix (its item timestamps) under cfg's mode and strategy."""
    if cfg.mode in ("direct", "titles"):
        return [len(times)] if times else []
    if cfg.block_strategy == "session":
        return session_ends(times, cfg.session_gap, cfg.max_block_size)
    return block_ends(len(times), cfg.block_size)


def blocking_label(cfg: UserSummary) -> str:
    """The blocking part of a cache key: b3 | b0 (whole history) | s3600x10 | direct | titles."""
    if cfg.mode in ("direct", "titles"):
        return cfg.mode
    return f"b{cfg.block_size}" if cfg.block_strategy == "fixed" else f"s{cfg.session_gap}x{cfg.max_block_size}"


# --- prefixes --------------------------------------------------------------------------------------

def prefixes(splits: dict[str, pd.DataFrame], interactions: pd.DataFrame,
             source: str = "interactions.parquet") -> pd.DataFrame:
    """One row per split row: split, user_id, target_pos, prefix (items before the target, oldest
    first) and their timestamps. The prefix is `history` when it is whole (len == target_pos), else
    the user's sequence[:target_pos] from `interactions` (sorted by user then time, as written)."""
    check_columns(interactions, [USER, ITEM, TIME], source)
    seqs = interactions.groupby(USER, sort=False)[ITEM].agg(list)
    time_of = dict(zip(zip(interactions[USER], interactions[ITEM]), interactions[TIME].astype("int64")))
    out = []
    for name in SPLITS:
        part = splits[name]
        check_columns(part, [USER, TARGET_POS, HISTORY], f"{name} rows")
        for user, pos, history in zip(part[USER], part[TARGET_POS], part[HISTORY]):
            history, pos = list(history), int(pos)
            if len(history) == pos:
                prefix = history
            else:
                prefix = seqs.get(user, [])[:pos]
                if len(prefix) != pos or prefix[len(prefix) - len(history):] != history:
                    raise DataError(f"{name} row user={user!r} target_pos={pos}: its history does not match "
                                    f"the user's sequence in {source}")
            try:
                times = [int(time_of[(user, i)]) for i in prefix]
            except KeyError as err:
                raise DataError(f"{name} row user={user!r}: item {err.args[0][1]!r} of its history is not "
                                f"among the user's interactions in {source}") from None
            out.append((name, user, pos, prefix, times))
    return pd.DataFrame(out, columns=[SPLIT, USER, TARGET_POS, PREFIX, TIMES])


def item_texts(items: pd.DataFrame, item_summaries: pd.DataFrame | None) -> dict[str, tuple[str, str | None]]:
    """{item_id: (title, summary or None)}; None = title-only line (no summary, or summaries off)."""
    check_columns(items, [ITEM, TITLE], "items")
    summary = {}
    if item_summaries is not None:
        check_columns(item_summaries, [ITEM, SUMMARY], "item_summaries")
        summary = {i: s for i, s in zip(item_summaries[ITEM], item_summaries[SUMMARY])
                   if isinstance(s, str) and s.strip()}
    return {i: ("" if pd.isna(t) else str(t), summary.get(i)) for i, t in zip(items[ITEM], items[TITLE])}


# --- plan: distinct block states -------------------------------------------------------------------

@dataclass
class State:
    key: str
    user: str
    end: int  # upto_position: items [0, end) of the sequence are summarised
    index: int  # block_index, 0-based
    text: str  # numbered item lines of this block (direct: of the whole prefix)
    prev: str | None  # key of s_{k-1}
    titles: tuple[str, ...]


def plan(rows: pd.DataFrame, texts: dict[str, tuple[str, str | None]], cfg: UserSummary,
         kind: str) -> tuple[dict[str, State], list[str | None]]:
    """The distinct block states `rows` need (insertion order) and each row's final state key
    (None for an empty prefix)."""
    label, states, memo, finals = blocking_label(cfg), {}, {}, []
    for user, prefix, times in zip(rows[USER], rows[PREFIX], rows[TIMES]):
        prev, start = None, 0
        for k, end in enumerate(prefix_ends(list(times), cfg)):
            block = tuple(prefix[start:end])
            key = memo.get((user, prev, block))
            if key is None:
                missing = [i for i in block if i not in texts]
                if missing:
                    raise DataError(f"user {user!r}: item(s) {missing[:3]} of the history are not in items.parquet")
                text = prompts.user_items_text([texts[i] for i in block], kind,
                                               ids=block if cfg.prompt == "official" else None)
                key = f"{user}@{end}/{label}:{prompts.prompt_hash([prev or '', text])}"
                memo[(user, prev, block)] = key
                states.setdefault(key, State(key, user, end, k, text, prev, tuple(texts[i][0] for i in block)))
            prev, start = key, end
        finals.append(prev)
    return states, finals


# --- generation ------------------------------------------------------------------------------------

def summarize_users(rows: pd.DataFrame, texts: dict[str, tuple[str, str | None]], loaded: LoadedModel,
                    cache_dir: str | Path, cfg: UserSummary, *, kind: str, seed: int = 0,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Preferences for `rows` (a `prefixes` table): (PREFERENCE_COLUMNS in row order,
    USER_SUMMARY_COLUMNS one row per distinct block state, stats)."""
    start = time.perf_counter()
    gen = summarize.generation_kwargs(cfg.max_new_tokens, cfg.do_sample,
                                      cfg.temperature if cfg.do_sample else None,
                                      cfg.top_p if cfg.do_sample else None)
    phash = prompts.prompt_hash([*prompts.user_templates(cfg.mode, cfg.prompt), kind, cfg.mode,
                                 json.dumps(gen, sort_keys=True)])
    states, finals = plan(rows, texts, cfg, kind)
    steps = defaultdict(list)
    for s in states.values():
        steps[s.index].append(s)

    cache, summary = ShardCache(cache_dir), {}
    counts = {"generated": 0, "cached": 0, "empty": 0}
    for k in sorted(steps):
        requests = []
        for s in steps[k]:
            previous = summary[s.prev] if s.prev else None
            text = (prompts.user_direct_prompt(s.text, kind, cfg.prompt, s.user) if cfg.mode == "direct"
                    else prompts.user_block_prompt(s.text, previous, kind, cfg.prompt, s.user))
            fallback = previous or f"{prompts.USER_ANSWER_START} {'; '.join(s.titles)}."
            requests.append(summarize.Request(s.key, prompts.user_message(text), phash, fallback))
        records, st = summarize.generate_cached(requests, loaded, cache, batch_size=cfg.batch_size,
                                                gen_kwargs=gen, progress=progress,
                                                desc=f"user summaries, block {k + 1}/{len(steps)}", seed=seed)
        summary.update(zip(records[KEY], records[SUMMARY]))
        for c in counts:
            counts[c] += st[c]

    prefs = rows[[SPLIT, USER, TARGET_POS]].copy()
    prefs[PREFERENCE] = [summary[f] if f else prompts.USER_EMPTY_HISTORY for f in finals]
    blocks = pd.DataFrame({USER: [s.user for s in states.values()], UPTO: [s.end for s in states.values()],
                           BLOCK_INDEX: [s.index for s in states.values()],
                           SUMMARY: [summary[k] for k in states], MODEL: loaded.model_ref, PROMPT_HASH: phash})
    blocks = blocks.astype({UPTO: "int64", BLOCK_INDEX: "int64"})
    naive = sum(len(prefix_ends(list(t), cfg)) for t in rows[TIMES])
    stats = {
        "llm_calls": counts["generated"], "cached": counts["cached"], "block_states": len(states),
        "naive_calls": naive, "ratio": round(len(states) / naive, 4) if naive else 0.0,
        "steps": len(steps), "users": int(rows[USER].nunique()), "rows": len(rows),
        "empty_histories": sum(f is None for f in finals), "empty_generations": counts["empty"],
        "mode": cfg.mode, "block_strategy": cfg.block_strategy, "block_size": cfg.block_size,
        "model": loaded.model_ref, "prompt_hash": phash, "seconds": round(time.perf_counter() - start, 3),
    }
    return prefs.reset_index(drop=True), blocks.sort_values([USER, UPTO, BLOCK_INDEX]).reset_index(drop=True), stats


def title_preferences(rows: pd.DataFrame, texts: dict[str, tuple[str, str | None]], kind: str,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """`mode: titles` (no LLM): each row's preference is its prefix's titles, numbered, oldest first.
    Same outputs as summarize_users; one state per distinct prefix (block 0 ending at the target)."""
    start = time.perf_counter()
    phash = prompts.prompt_hash([prompts.USER_TITLES, prompts.USER_ITEM_LINE_TITLE_ONLY, kind, "titles"])
    missing = {i for prefix in rows[PREFIX] for i in prefix if i not in texts}
    if missing:
        raise DataError(f"item(s) {sorted(missing)[:3]} of the histories are not in items.parquet")
    prefs = rows[[SPLIT, USER, TARGET_POS]].copy()
    prefs[PREFERENCE] = [prompts.user_titles_text([texts[i][0] for i in prefix], kind) if len(prefix)
                         else prompts.USER_EMPTY_HISTORY for prefix in rows[PREFIX]]
    nonempty = (rows[PREFIX].map(len) > 0).to_numpy()
    blocks = (prefs[nonempty].assign(**{UPTO: prefs[TARGET_POS].astype("int64"), BLOCK_INDEX: 0,
                                        SUMMARY: prefs[PREFERENCE], MODEL: "titles (no LLM)", PROMPT_HASH: phash})
              .drop_duplicates([USER, UPTO])[USER_SUMMARY_COLUMNS].astype({BLOCK_INDEX: "int64"}))
    stats = {
        "llm_calls": 0, "cached": 0, "block_states": len(blocks), "naive_calls": 0, "ratio": 0.0, "steps": 0,
        "users": int(rows[USER].nunique()), "rows": len(rows),
        "empty_histories": int((~nonempty).sum()), "empty_generations": 0,
        "mode": "titles", "block_strategy": None, "block_size": None, "model": None, "prompt_hash": phash,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return prefs.reset_index(drop=True), blocks.sort_values([USER, UPTO]).reset_index(drop=True), stats


# --- stage -----------------------------------------------------------------------------------------

def load_rows(params: Params, dataset: str) -> pd.DataFrame:
    """The dataset's prefix table (all splits; user_summary.rows: used keeps the rows the LLM stages
    read, msr_utils.rows; the first user_summary.limit users when set)."""
    p = paths(params, dataset)
    interactions = pd.read_parquet(p["interactions"])
    splits = {s: pd.read_parquet(p[s]) for s in SPLITS}
    rows = keep_used(params, prefixes(splits, interactions, str(p["interactions"])), splits)
    if params.user_summary.limit:
        keep = pd.unique(interactions[USER])[:params.user_summary.limit]
        rows = rows[rows[USER].isin(keep)].reset_index(drop=True)
    return rows


def dataset_info(params: Params, dataset: str) -> dict:
    """dataset.json, checked against user_summary.block_strategy."""
    path = paths(params, dataset)["info"]
    info = json.loads(path.read_text())
    unit = info.get("timestamp_unit")
    if params.user_summary.block_strategy == "session" and params.user_summary.mode == "recurrent" and unit != "s":
        raise ConfigError(f"user_summary.block_strategy = 'session' needs timestamps in seconds, but {path} has "
                          f"timestamp_unit = {unit!r} (MicroLens pairs.tsv only gives the order); use "
                          "user_summary.block_strategy: fixed for this dataset")
    return info


def run(params: Params, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """What the notebook calls: (preferences, user_summaries, stats); writes both parquet files
    under data/summaries/<dataset> and the metrics JSON under results/<dataset>. With base.processes
    N > 1, on N processes (msr_utils.launch): the same files."""
    cfg, p = params.user_summary, paths(params, dataset)
    if cfg.mode != "titles" and launch.wanted(params):
        return launch.run(params, "user_summaries", dataset)
    info = dataset_info(params, dataset)
    rows = load_rows(params, dataset)
    items = pd.read_parquet(p["items"])
    item_summaries = None
    if params.item_summary.enabled:
        item_summaries = pd.read_parquet(require(p["item_summaries"], STAGE_02,
                                                 "set item_summary.enabled: false for titles only"))
    texts = item_texts(items, item_summaries)
    if cfg.mode == "titles":  # no model: the preference is the history's titles
        prefs, blocks, stats = title_preferences(rows, texts, info["noun"])
    else:
        loaded = models.load_profile(params, cfg.model)
        prefs, blocks, stats = summarize_users(rows, texts, loaded, p["cache"], cfg, kind=info["noun"],
                                               seed=params.base.seed)
    stats["items_without_summary"] = sum(1 for t, s in texts.values() if s is None)
    stats["item_summaries"] = params.item_summary.enabled
    if not launch.is_main():  # the main process writes
        return prefs, blocks, stats
    p["preferences"].parent.mkdir(parents=True, exist_ok=True)
    prefs.to_parquet(p["preferences"], index=False)
    blocks.to_parquet(p["user_summaries"], index=False)
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    p["metrics"].write_text(json.dumps(stats, indent=2) + "\n")
    return prefs, blocks, stats


def evolution(params: Params, dataset: str, user: str | None = None, split: str = "test") -> pd.DataFrame:
    """One row's summaries in order (the first `split` row, or `user`'s): per block its positions,
    titles and the updated summary, read from the written user_summaries.parquet."""
    p, cfg = paths(params, dataset), params.user_summary
    rows = load_rows(params, dataset)
    rows = rows[(rows[SPLIT] == split) & ((rows[USER] == user) if user is not None else True)]
    if rows.empty:
        raise DataError(f"no {split} row for user {user!r} in {p['processed']}")
    row = rows.iloc[0]
    titles = pd.read_parquet(p["items"]).set_index(ITEM)[TITLE]
    blocks = pd.read_parquet(p["user_summaries"]).set_index([USER, UPTO, BLOCK_INDEX])[SUMMARY]
    out, start = [], 0
    for k, end in enumerate(prefix_ends(list(row[TIMES]), cfg)):
        out.append({USER: row[USER], BLOCK_INDEX: k, "positions": f"{start}-{end - 1}",
                    "titles": " | ".join(titles.get(i, "") for i in row[PREFIX][start:end]),
                    SUMMARY: blocks.get((row[USER], end, k))})
        start = end
    return pd.DataFrame(out)
