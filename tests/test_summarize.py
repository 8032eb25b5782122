"""Batched cached generation on the tiny VLM: fallbacks, resume, invalidation, shards."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from msr_utils import cache, launch, models, summarize, tiny
from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TITLE
from tests.conftest import count_generate, shard_keys

REPO = Path(__file__).resolve().parents[1]
GEN = dict(max_new_tokens=6, progress=False)
N_GOOD = 10
NO_IMAGE = {"corrupt", "missing", "none", "placeholder", "empty-path"}


@pytest.fixture(scope="module")
def vlm(tiny_dir):
    return models.load(tiny_dir / tiny.VLM_DIR, kind="vlm")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        w, h = [(32, 32), (64, 32), (40, 80), (1, 1), (120, 60)][i % 5]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


@pytest.fixture
def items():
    rows = [(f"v{i}", f"video {i} " + "word " * (i % 4), f"{i}.png", False) for i in range(N_GOOD)]
    rows += [("corrupt", "a broken cover", "corrupt.jpg", False),
             ("missing", "a lost cover", "nowhere.jpg", False),
             ("none", "no cover at all", None, False),
             ("placeholder", "default cover", "0.png", True),
             ("empty-path", "blank path", "", False),
             ("v0", "duplicate row of v0", "1.png", False)]
    return pd.DataFrame(rows, columns=[ITEM, TITLE, IMAGE_PATH, IMAGE_PLACEHOLDER])


N_ITEMS = N_GOOD + len(NO_IMAGE)


def test_title_only_fallbacks_are_counted_and_rerun_is_cached(vlm, items, image_root, tmp_path, monkeypatch):
    calls = count_generate(monkeypatch, vlm)
    out, stats = summarize.summarize_items(items, vlm, tmp_path, image_root=image_root, batch_size=4, **GEN)
    assert list(out.columns) == summarize.ITEM_SUMMARY_COLUMNS
    assert out[ITEM].tolist() == items[ITEM].drop_duplicates().tolist()  # input order, deduplicated
    assert set(out.loc[~out[summarize.IMAGE_USED], ITEM]) == NO_IMAGE
    assert stats["items"] == stats["generated"] == sum(calls) == N_ITEMS
    assert stats["title_only"] == len(NO_IMAGE) and stats["image_errors"] == 2  # corrupt + missing
    assert out[summarize.SUMMARY].str.len().gt(0).all()
    assert (out[cache.MODEL] == vlm.model_ref).all()
    assert out.groupby(summarize.IMAGE_USED)[cache.PROMPT_HASH].nunique().tolist() == [1, 1]
    assert out.loc[out[ITEM] == "v0", summarize.SUMMARY].item() == out[summarize.SUMMARY][0]

    again, stats2 = summarize.summarize_items(items, vlm, tmp_path, image_root=image_root, batch_size=4, **GEN)
    assert sum(calls) == N_ITEMS and stats2["generated"] == 0 and stats2["cached"] == N_ITEMS
    pd.testing.assert_frame_equal(again, out)
    assert sorted(shard_keys(tmp_path)) == sorted(out[ITEM])


def test_resume_after_crash_generates_each_item_once(vlm, items, image_root, tmp_path, monkeypatch):
    calls = count_generate(monkeypatch, vlm, fail_after=2)
    with pytest.raises(RuntimeError, match="injected"):
        summarize.summarize_items(items, vlm, tmp_path, image_root=image_root, batch_size=3, **GEN)
    assert sum(calls) == 6 and len(shard_keys(tmp_path)) == 6

    calls = count_generate(monkeypatch, vlm)
    out, stats = summarize.summarize_items(items, vlm, tmp_path, image_root=image_root, batch_size=3, **GEN)
    assert stats["cached"] == 6 and stats["generated"] == sum(calls) == N_ITEMS - 6
    keys = shard_keys(tmp_path)
    assert len(keys) == len(set(keys)) == N_ITEMS and set(out[ITEM]) == set(keys)


CHILD = """
import sys, time, pandas as pd
from msr_utils import models, summarize
loaded = models.load(sys.argv[1], kind="vlm")
real = loaded.model.generate
def slow(**kw):
    time.sleep(0.4)
    return real(**kw)
loaded.model.generate = slow
items = pd.read_parquet(sys.argv[2])
summarize.summarize_items(items, loaded, sys.argv[3], image_root=sys.argv[4], batch_size=2,
                          max_new_tokens=6, progress=False)
"""


def test_resume_after_kill_9(vlm, tiny_dir, items, image_root, tmp_path, monkeypatch):
    items.to_parquet(tmp_path / "items.parquet")
    (tmp_path / "child.py").write_text(CHILD)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tiny_dir / tiny.VLM_DIR),
                              str(tmp_path / "items.parquet"), str(cache_dir), str(image_root)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None and len(cache.ShardCache(cache_dir).shards()) < 2:
        time.sleep(0.05)
    assert child.poll() is None, "the child finished (or died) before it could be killed mid-run"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed mid-run, not finished
    done = shard_keys(cache_dir)
    assert 2 * 2 <= len(done) < N_ITEMS

    # The child loaded the model from the same path, so its records count as this model's.
    calls = count_generate(monkeypatch, vlm)
    out, stats = summarize.summarize_items(items, vlm, cache_dir, image_root=image_root, batch_size=2, **GEN)
    keys = shard_keys(cache_dir)
    assert stats["cached"] == len(done) and stats["generated"] == sum(calls) == N_ITEMS - len(done)
    assert len(keys) == len(set(keys)) == N_ITEMS and set(out[ITEM]) == set(keys)
    shards = set(cache.ShardCache(cache_dir).shards())  # a shard cut by the kill stays a hidden temp file
    assert all(p.name.startswith(".") for p in cache_dir.iterdir() if p not in shards)


def test_prompt_or_model_change_regenerates_only_its_keys(vlm, items, image_root, tmp_path, monkeypatch):
    calls = count_generate(monkeypatch, vlm)
    run = dict(image_root=image_root, batch_size=8, **GEN)
    first, _ = summarize.summarize_items(items, vlm, tmp_path, **run)
    n_image = int(first[summarize.IMAGE_USED].sum())

    new_image_prompt = {True: "Describe the cover of {title} in ten words."}
    changed, stats = summarize.summarize_items(items, vlm, tmp_path, templates=new_image_prompt, **run)
    assert stats["generated"] == n_image and stats["cached"] == len(NO_IMAGE)
    was_image = first[summarize.IMAGE_USED]
    assert (changed[cache.PROMPT_HASH][was_image] != first[cache.PROMPT_HASH][was_image]).all()
    pd.testing.assert_frame_equal(changed[~was_image], first[~was_image])

    back, stats = summarize.summarize_items(items, vlm, tmp_path, **run)  # old records still there
    assert stats["generated"] == 0
    pd.testing.assert_frame_equal(back, first)

    _, stats = summarize.summarize_items(items, vlm, tmp_path, **{**run, "max_new_tokens": 5})
    assert stats["generated"] == N_ITEMS  # generation settings are part of the hash
    other = dataclasses.replace(vlm, model_ref="another/model")
    _, stats = summarize.summarize_items(items, other, tmp_path, **run)
    assert stats["generated"] == N_ITEMS
    assert sum(calls) == N_ITEMS + n_image + 2 * N_ITEMS


def test_shards_and_merge_equal_single_run(vlm, items, image_root, tmp_path):
    run = dict(image_root=image_root, batch_size=4, **GEN)
    single, _ = summarize.summarize_items(items, vlm, tmp_path / "single", **run)
    parts = []
    for i in range(3):
        part, stats = summarize.summarize_items(items, vlm, tmp_path / f"shard{i}", shard=(i, 3), **run)
        assert stats["generated"] == len(part)
        parts.append(set(part[ITEM]))
    assert sum(map(len, parts)) == N_ITEMS and set.union(*parts) == set(single[ITEM])
    assert all(parts)  # every machine got some work

    cache.merge([tmp_path / f"shard{i}" for i in range(3)], tmp_path / "merged")
    merged, stats = summarize.summarize_items(items, vlm, tmp_path / "merged", **run)
    assert stats["generated"] == 0
    pd.testing.assert_frame_equal(merged, single)
    pd.testing.assert_frame_equal(cache.ShardCache(tmp_path / "merged").read(),
                                  cache.ShardCache(tmp_path / "single").read())
    with pytest.raises(ValueError, match="shard="):
        summarize.summarize_items(items, vlm, tmp_path / "bad", shard=(3, 3), **run)


def test_rank_0_keeps_another_machines_records_in_its_cache(vlm, items, image_root, tmp_path, monkeypatch):
    """Rank 0 of 2 whose disk does not hold rank 1's shards (another machine) writes rank 1's records to
    its own cache: a rerun there generates nothing and reads what one process would have written."""
    run = dict(image_root=image_root, batch_size=4, **GEN)
    single, _ = summarize.summarize_items(items, vlm, tmp_path / "single", **run)
    reference = cache.ShardCache(tmp_path / "single").read()

    def gather(obj):  # rank 1, elsewhere: nothing cached; the records rank 0 did not generate, its own shard paths
        if isinstance(obj, pd.DataFrame):
            return [obj, obj.iloc[:0]]
        rows, _, _ = obj
        theirs = reference[~reference[cache.KEY].isin({r[cache.KEY] for r in rows})]
        return [obj, (theirs.to_dict("records"), 0, ["/elsewhere/part-1.parquet"])]

    monkeypatch.setattr(launch, "world", lambda: (0, 2))
    monkeypatch.setattr(launch, "gather", gather)
    here, stats = summarize.summarize_items(items, vlm, tmp_path / "rank0", **run)
    pd.testing.assert_frame_equal(here, single)
    assert sorted(shard_keys(tmp_path / "rank0")) == sorted(reference[cache.KEY])  # each key once: its own, rank 1's
    assert len(pd.read_parquet(cache.ShardCache(tmp_path / "rank0").shards()[-1])) < len(reference)  # a part each
    monkeypatch.undo()
    again, stats = summarize.summarize_items(items, vlm, tmp_path / "rank0", **run)
    assert stats["generated"] == 0
    pd.testing.assert_frame_equal(again, single)


def test_empty_generation_is_replaced_by_title_and_counted(vlm, items, image_root, tmp_path, monkeypatch):
    def only_eos(**kwargs):  # a model that answers nothing
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 2), vlm.tokenizer.eos_token_id)], dim=1)

    monkeypatch.setattr(vlm.model, "generate", only_eos)
    out, stats = summarize.summarize_items(items, vlm, tmp_path, image_root=image_root, batch_size=8, **GEN)
    titles = items.drop_duplicates(ITEM).set_index(ITEM)[TITLE]
    assert stats["empty"] == N_ITEMS and out[summarize.EMPTY].all()
    assert (out[summarize.SUMMARY] == out[ITEM].map(titles)).all()


def test_text_lm_summarises_from_titles(tiny_dir, items, image_root, tmp_path):
    lm = models.load(tiny_dir / tiny.LM_DIR, kind="lm")
    out, stats = summarize.summarize_items(items, lm, tmp_path, image_root=image_root, dataset_kind="product",
                                           batch_size=8, **GEN)
    assert stats["title_only"] == N_ITEMS and not out[summarize.IMAGE_USED].any()
    assert out[cache.PROMPT_HASH].nunique() == 1


def test_bad_inputs_name_the_field(vlm, items, tmp_path):
    with pytest.raises(ValueError, match="image_placeholder"):
        summarize.summarize_items(items.drop(columns=[IMAGE_PLACEHOLDER]), vlm, tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        summarize.summarize_items(items, vlm, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="do_sample"):
        summarize.summarize_items(items, vlm, tmp_path, temperature=0.7)


def test_cache_keeps_first_record_and_filters(tmp_path):
    c = cache.ShardCache(tmp_path)
    c.append([{"key": "b", "model": "m", "prompt_hash": "h1", "summary": "first"},
              {"key": "a", "model": "m", "prompt_hash": "h1", "summary": "x"}])
    c.append([{"key": "b", "model": "m", "prompt_hash": "h1", "summary": "second"},
              {"key": "b", "model": "m", "prompt_hash": "h2", "summary": "other hash"}])
    assert c.append([]) is None
    assert c.done_keys("m", "h1") == {"a", "b"} and c.done_keys("m", "h2") == {"b"}
    assert c.done_keys("other", "h1") == set()
    df = c.read()
    assert df[["key", "prompt_hash", "summary"]].values.tolist() == [
        ["a", "h1", "x"], ["b", "h1", "first"], ["b", "h2", "other hash"]]
    assert len(c.read(prompt_hash="h2")) == 1
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("part-")]
    with pytest.raises(ValueError, match="prompt_hash"):
        c.append([{"key": "a", "model": "m"}])


def test_batches_cut_short_where_prompts_are_outliers():
    lengths = [100] * 10 + [120] * 5 + [4000, 6000]  # length-sorted, two outliers at the end
    requests = list(range(len(lengths)))
    got = summarize.batches(requests, lengths, batch_size=4)
    assert [r for b in got for r in b] == requests  # each request once, in order
    assert [len(b) for b in got[:4]] == [4, 4, 4, 3]  # typical prompts: full batches (15 = 4+4+4+3)
    assert got[-2:] == [[15], [16]]  # 2 x 6,000 > 4 x 2 x median (880): one outlier per batch
    assert all(len(b) * max(lengths[r] for r in b) <= 4 * 2 * 100 for b in got[:4])
    assert summarize.batches([], [], 4) == []
