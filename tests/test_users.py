"""Stage 03 on the tiny LM: blocks, recurrence order, reuse of block states, resume, no leakage."""

import json
import random

import pandas as pd
import pytest
import torch
import yaml

from msr_utils import cache, models, prompts, summarize, tiny, users
from msr_utils.config import ConfigError, UserSummary, load_params
from msr_utils.data import split
from msr_utils.data.schema import HISTORY, ITEM, SPLITS, TARGET, TARGET_POS, TITLE, USER, DataError
from tests.conftest import count_generate, params_text, shard_keys

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = UserSummary(block_size=3, batch_size=4, max_new_tokens=4)
LENGTHS = {"u1": 8, "u2": 5, "u3": 3}  # items per user; loo rows at every position >= 1


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return models.load(tiny_dir / tiny.LM_DIR, kind="lm")


def interactions(lengths=LENGTHS) -> pd.DataFrame:
    """Items `<u-n>`; timestamps in seconds with a 2-hour gap after the third item of each user."""
    rows = [(u, f"{u}-{n}", n * 60 + (7200 if n >= 3 else 0)) for u, k in lengths.items() for n in range(k)]
    return pd.DataFrame(rows, columns=[USER, ITEM, "timestamp"]).assign(rating=float("nan"))


def items_of(inter: pd.DataFrame) -> pd.DataFrame:
    ids = inter[ITEM].unique()
    return pd.DataFrame({ITEM: ids, TITLE: [f"clip <{i}>" for i in ids], "description": None,
                         "image_path": None, "image_url": None, "image_placeholder": True})


def summaries_of(items: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({ITEM: items[ITEM], summarize.SUMMARY: [f"cover of {i}" for i in items[ITEM]]})


def loo(inter: pd.DataFrame, max_history: int = 2) -> dict[str, pd.DataFrame]:
    """Leave-one-out rows with histories truncated to max_history (prefixes rebuilt from inter)."""
    return split.loo_rows(inter, max_history)


def texts_for(inter):
    items = items_of(inter)
    return users.item_texts(items, summaries_of(items))


def capture(monkeypatch):
    """Record every request users.py sends: {key: prompt text}, and every generate() batch size."""
    sent, real = {}, summarize.generate_cached

    def wrapper(requests, loaded, *args, **kwargs):
        for r in requests:
            sent[r.key] = r.messages[0]["content"][0]["text"]
        return real(requests, loaded, *args, **kwargs)

    monkeypatch.setattr(summarize, "generate_cached", wrapper)
    return sent


# --- blocks ----------------------------------------------------------------------------------------

def test_fixed_blocks_are_aligned_from_the_start():
    assert users.block_ends(7, 3) == [3, 6, 7]
    assert users.block_ends(6, 3) == [3, 6]
    assert users.block_ends(2, 3) == [2]  # shorter than a block: one block
    assert users.block_ends(0, 3) == []
    assert users.block_ends(4, 0) == [4]  # 0 = one block holding the whole history
    with pytest.raises(ValueError, match="block_size"):
        users.block_ends(4, -1)


def test_session_blocks_cut_at_gaps_and_max_size_and_prefixes_share_them():
    assert users.session_ends([0, 10, 20, 5000, 5010, 9000], gap=3600, max_block=10) == [3, 5, 6]
    assert users.session_ends([0, 1, 2, 3, 4], gap=3600, max_block=2) == [2, 4, 5]
    assert users.session_ends([], 3600, 2) == []
    rng = random.Random(0)
    times = sorted(rng.randrange(0, 50_000) for _ in range(40))
    full = users.session_ends(times, 3600, 4)
    for n in range(1, 41):  # a prefix's blocks = the full sequence's blocks before n, then n
        assert users.session_ends(times[:n], 3600, 4) == [e for e in full if e < n] + [n]


def test_session_strategy_on_order_timestamps_names_the_param(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"user_summary": {"block_strategy": "session"}}))
    info = tmp_path / "data" / "processed" / "microlens50k" / "dataset.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"noun": "video", "timestamp_unit": "order"}))
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match=r"user_summary.block_strategy.*timestamp_unit = 'order'"):
        users.run(params, "microlens50k")
    info.write_text(json.dumps({"noun": "video", "timestamp_unit": "s"}))
    assert users.dataset_info(params, "microlens50k")["noun"] == "video"


# --- prefixes and leakage --------------------------------------------------------------------------

def test_prefixes_rebuild_truncated_histories_and_check_them():
    inter = interactions()
    rows = users.prefixes(loo(inter), inter)
    seq = inter.groupby(USER)[ITEM].agg(list)
    assert len(rows) == sum(k - 1 for k in LENGTHS.values())
    for user, pos, prefix, times in zip(rows[USER], rows[TARGET_POS], rows[users.PREFIX], rows[users.TIMES]):
        assert prefix == seq[user][:pos] and len(times) == pos
    bad = loo(inter)
    bad["test"][HISTORY] = [["u1-0", "u1-1"]] * len(bad["test"])
    with pytest.raises(DataError, match="does not match .*interactions"):
        users.prefixes(bad, inter, "interactions.parquet")


def test_no_item_at_or_after_the_target_enters_its_prompts(lm, tmp_path, monkeypatch):
    inter = interactions()
    rows = users.prefixes(loo(inter), inter)
    texts = texts_for(inter)
    sent = capture(monkeypatch)
    users.summarize_users(rows, texts, lm, tmp_path, CFG, kind="video", progress=False)
    states, finals = users.plan(rows, texts, CFG, "video")
    seq = inter.groupby(USER)[ITEM].agg(list)
    for user, pos, final in zip(rows[USER], rows[TARGET_POS], finals):
        chain, key = [], final
        while key:
            chain.append(sent[key])
            key = states[key].prev
        used = "\n".join(chain)
        for later in seq[user][pos:]:  # the target (its title is unique) and everything after it
            assert f"<{later}>" not in used, f"{later} leaked into the prompts of {user}@{pos}"
        assert f"<{seq[user][pos - 1]}>" in used  # the capture sees the row's own last item
    tests = loo(inter)["test"]
    assert not any(f"<{t}>" in p for t in tests[TARGET] for p in sent.values())  # last items: nowhere


# --- recurrence, reuse, counts ---------------------------------------------------------------------

def test_recurrence_feeds_each_summary_to_the_next_block(lm, tmp_path, monkeypatch):
    inter = interactions({"u1": 8})
    rows = users.prefixes(loo(inter), inter)
    sent = capture(monkeypatch)
    calls = count_generate(monkeypatch, lm)
    prefs, blocks, stats = users.summarize_users(rows, texts_for(inter), lm, tmp_path, CFG, kind="video",
                                                 progress=False)
    # rows at target_pos 1..7; blocks [3, 6, p]: states at every end 1..7, naive 1+1+1+2+2+2+3
    assert stats["block_states"] == stats["llm_calls"] == sum(calls) == 7
    assert stats["naive_calls"] == 12 and stats["ratio"] == round(7 / 12, 4)
    assert list(blocks.columns) == users.USER_SUMMARY_COLUMNS and len(blocks) == 7
    assert blocks.set_index(users.UPTO)[users.BLOCK_INDEX].to_dict() == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 2}
    summary = dict(zip(zip(blocks[users.UPTO], blocks[users.BLOCK_INDEX]), blocks[summarize.SUMMARY]))
    states, _ = users.plan(rows, texts_for(inter), CFG, "video")
    for s in states.values():
        text = sent[s.key]
        if s.prev is None:
            assert "previous preference" not in text
        else:  # s_k = LLM(s_{k-1}, block_k)
            prev = states[s.prev]
            assert prev.index == s.index - 1 and prev.end == s.end - len(s.titles)
            assert f"previous preference.\n{summary[(prev.end, prev.index)]}\n" in text
        assert prompts.USER_ANSWER_START in text
    # a row's preference is the summary after its last block, which ends at its target
    by_end = blocks.set_index(users.UPTO)[summarize.SUMMARY]
    assert (prefs[users.PREFERENCE] == prefs[TARGET_POS].map(by_end)).all()


def test_longer_prefix_reuses_every_full_block_of_a_shorter_one(lm, tmp_path, monkeypatch):
    inter = interactions({"u1": 8})
    rows = users.prefixes(loo(inter), inter)
    calls = count_generate(monkeypatch, lm)
    valid = rows[rows[users.SPLIT] == "valid"]  # prefix of 6: blocks [3, 6]
    _, _, stats = users.summarize_users(valid, texts_for(inter), lm, tmp_path, CFG, kind="video", progress=False)
    assert stats["llm_calls"] == 2
    test = rows[rows[users.SPLIT] == "test"]  # prefix of 7: blocks [3, 6, 7] -> only the last is new
    _, _, stats = users.summarize_users(test, texts_for(inter), lm, tmp_path, CFG, kind="video", progress=False)
    assert stats["llm_calls"] == 1 and stats["cached"] == 2 and sum(calls) == 3
    _, _, stats = users.summarize_users(rows, texts_for(inter), lm, tmp_path, CFG, kind="video", progress=False)
    assert stats["llm_calls"] == 4 and sum(calls) == 7  # train prefixes 1, 2, 4, 5 are new; 3 and 6 shared
    keys = shard_keys(tmp_path)
    assert len(keys) == len(set(keys)) == 7


def test_changed_item_summary_or_block_size_is_a_new_state(lm, tmp_path):
    inter = interactions({"u1": 5})
    rows = users.prefixes(loo(inter), inter)
    texts = texts_for(inter)
    users.summarize_users(rows, texts, lm, tmp_path, CFG, kind="video", progress=False)
    changed = {**texts, "u1-4": ("clip <u1-4>", "new summary")}  # not in any prefix: nothing new
    assert users.summarize_users(rows, changed, lm, tmp_path, CFG, kind="video", progress=False)[2]["llm_calls"] == 0
    changed = {**texts, "u1-1": ("clip <u1-1>", "new summary")}  # in every prefix but [u1-0]
    assert users.summarize_users(rows, changed, lm, tmp_path, CFG, kind="video", progress=False)[2]["llm_calls"] == 3
    b2 = CFG.model_copy(update={"block_size": 2})
    _, blocks, stats = users.summarize_users(rows, texts, lm, tmp_path, b2, kind="video", progress=False)
    assert stats["llm_calls"] == stats["block_states"] == 4 and blocks[users.BLOCK_INDEX].max() == 1
    sampled = CFG.model_copy(update={"do_sample": True, "temperature": 0.6, "top_p": 0.9})
    _, _, stats = users.summarize_users(rows, texts, lm, tmp_path, sampled, kind="video", progress=False)
    assert stats["llm_calls"] == 4 and stats["prompt_hash"] != users.summarize_users(
        rows, texts, lm, tmp_path, CFG, kind="video", progress=False)[2]["prompt_hash"]


def test_the_vlm_can_write_user_summaries(tiny_dir, tmp_path):
    vlm = models.load(tiny_dir / tiny.VLM_DIR, kind="vlm")
    inter = interactions({"u1": 5})
    rows = users.prefixes(loo(inter), inter)
    prefs, _, stats = users.summarize_users(rows, texts_for(inter), vlm, tmp_path, CFG, kind="video",
                                            progress=False)
    assert stats["llm_calls"] == 4 and prefs[users.PREFERENCE].str.len().gt(0).all()


def test_resume_after_a_crash_generates_each_state_once(lm, tmp_path, monkeypatch):
    inter = interactions()
    rows = users.prefixes(loo(inter), inter)
    texts = texts_for(inter)
    n_states = len(users.plan(rows, texts, CFG, "video")[0])
    calls = count_generate(monkeypatch, lm, fail_after=3)  # dies in the 4th batch (batch_size 4)
    with pytest.raises(RuntimeError, match="injected"):
        users.summarize_users(rows, texts, lm, tmp_path, CFG, kind="video", progress=False)
    done = shard_keys(tmp_path)
    assert len(done) == sum(calls) == 12 < n_states
    calls = count_generate(monkeypatch, lm)
    prefs, blocks, stats = users.summarize_users(rows, texts, lm, tmp_path, CFG, kind="video", progress=False)
    keys = shard_keys(tmp_path)
    assert stats["cached"] == 12 and stats["llm_calls"] == sum(calls) == n_states - 12
    assert len(keys) == len(set(keys)) == n_states == len(blocks)  # none twice, none lost
    assert prefs[users.PREFERENCE].str.len().gt(0).all()


def test_short_and_empty_histories(lm, tmp_path, monkeypatch):
    inter = interactions({"u1": 3, "u2": 2})
    rows = users.prefixes(loo(inter), inter)
    first = pd.DataFrame({users.SPLIT: ["train"], USER: ["u1"], TARGET_POS: [0],
                          users.PREFIX: [[]], users.TIMES: [[]]})
    rows = pd.concat([first, rows], ignore_index=True)
    calls = count_generate(monkeypatch, lm)
    prefs, blocks, stats = users.summarize_users(rows, texts_for(inter), lm, tmp_path, CFG, kind="product",
                                                 progress=False)
    assert prefs[users.PREFERENCE][0] == prompts.USER_EMPTY_HISTORY and stats["empty_histories"] == 1
    assert stats["llm_calls"] == sum(calls) == 3  # u1@1, u1@2, u2@1: each shorter than one block
    assert (blocks[users.BLOCK_INDEX] == 0).all() and prefs[users.PREFERENCE][1:].str.len().gt(0).all()
    assert len(prefs) == len(rows)


def test_direct_mode_sends_the_whole_prefix_once(lm, tmp_path, monkeypatch):
    inter = interactions({"u1": 8})
    rows = users.prefixes(loo(inter), inter)
    sent = capture(monkeypatch)
    direct = CFG.model_copy(update={"mode": "direct"})
    prefs, blocks, stats = users.summarize_users(rows, texts_for(inter), lm, tmp_path, direct, kind="video",
                                                 progress=False)
    assert stats["llm_calls"] == stats["naive_calls"] == len(rows) == 7 and stats["ratio"] == 1.0
    assert (blocks[users.BLOCK_INDEX] == 0).all()
    longest = max(sent.values(), key=len)
    assert all(f"<u1-{n}>" in longest for n in range(7)) and "previous preference" not in longest
    assert "in terms of both content and visual style" in longest


def test_empty_generation_keeps_the_previous_summary(lm, tmp_path, monkeypatch):
    def only_eos(**kwargs):
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 2), lm.tokenizer.eos_token_id)], dim=1)

    monkeypatch.setattr(lm.model, "generate", only_eos)
    inter = interactions({"u1": 5})
    rows = users.prefixes(loo(inter), inter)
    prefs, blocks, stats = users.summarize_users(rows, texts_for(inter), lm, tmp_path, CFG, kind="video",
                                                 progress=False)
    assert stats["empty_generations"] == stats["block_states"]
    first = blocks.set_index(users.UPTO)[summarize.SUMMARY]
    assert first[3] == f"{prompts.USER_ANSWER_START} clip <u1-0>; clip <u1-1>; clip <u1-2>."
    assert first[4] == first[3]  # s_2 fell back to s_1


# --- the stage -------------------------------------------------------------------------------------

def write_project(root, tiny_dir, lengths=LENGTHS, **user_summary):
    """A scratch project: params.yaml (tiny LM, small generation) + processed tables + item summaries."""
    tree = yaml.safe_load(params_text())
    tree["models"]["tiny"]["lm"] = str(tiny_dir / tiny.LM_DIR)
    tree["user_summary"].update({"batch_size": 4, "max_new_tokens": 4, **user_summary})
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    out = root / "data" / "processed" / "microlens50k"
    out.mkdir(parents=True)
    inter = interactions(lengths)
    inter.to_parquet(out / "interactions.parquet")
    items = items_of(inter)
    items.to_parquet(out / "items.parquet")
    for name, part in loo(inter).items():
        part.to_parquet(out / f"{name}.parquet")
    (out / "dataset.json").write_text(json.dumps({"noun": "video", "timestamp_unit": "s"}))
    (root / "data" / "summaries" / "microlens50k").mkdir(parents=True)
    summaries_of(items).to_parquet(root / "data" / "summaries" / "microlens50k" / "item_summaries.parquet")
    return load_params(root / "params.yaml")


def test_run_writes_one_preference_per_split_row_and_metrics(tiny_dir, tmp_path, monkeypatch):
    params = write_project(tmp_path, tiny_dir)
    prefs, blocks, stats = users.run(params, "microlens50k")
    p = users.paths(params, "microlens50k")
    saved = pd.read_parquet(p["preferences"])
    assert list(saved.columns) == users.PREFERENCE_COLUMNS
    for name in SPLITS:
        rows = pd.read_parquet(p["processed"] / f"{name}.parquet")
        got = saved[saved[users.SPLIT] == name]
        assert got[[USER, TARGET_POS]].values.tolist() == rows[[USER, TARGET_POS]].values.tolist()
    assert list(pd.read_parquet(p["user_summaries"]).columns) == users.USER_SUMMARY_COLUMNS
    metrics = json.loads(p["metrics"].read_text())
    assert metrics["rows"] == len(saved) == 13 and metrics["llm_calls"] == metrics["block_states"] == 13
    assert metrics["naive_calls"] == 12 + 5 + 2 and metrics["users"] == 3
    assert (blocks[cache.MODEL].str.startswith(str(tiny_dir / tiny.LM_DIR) + "@")).all()
    assert users.run(params, "microlens50k")[2]["llm_calls"] == 0  # rerun: all cached

    evo = users.evolution(params, "microlens50k", user="u1")
    assert evo["positions"].tolist() == ["0-2", "3-5", "6-6"] and evo[summarize.SUMMARY].notna().all()

    sent = capture(monkeypatch)  # titles only (ablation): new prompts without item summaries
    off = load_params(tmp_path / "params.yaml", {"item_summary.enabled": False, "user_summary.limit": 1})
    _, _, stats = users.run(off, "microlens50k")
    assert stats["rows"] == 7 and stats["llm_calls"] == 7 and stats["items_without_summary"] == 16
    assert not any("description" in t for t in sent.values())


def test_session_blocks_on_real_seconds(tiny_dir, tmp_path):
    params = write_project(tmp_path, tiny_dir, {"u1": 8}, block_strategy="session", max_block_size=2)
    _, blocks, stats = users.run(params, "microlens50k")
    # the 2-hour gap after item 3 cuts a session; sessions split into blocks of <= 2: ends 2, 3, 5, 7, 8
    assert stats["naive_calls"] == 1 + 1 + 2 + 3 + 3 + 4 + 4 and stats["block_states"] == 7
    evo = users.evolution(params, "microlens50k", user="u1")
    assert evo["positions"].tolist() == ["0-1", "2-2", "3-4", "5-6"]
