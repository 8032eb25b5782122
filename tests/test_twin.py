"""Twin models: the paper's real tokenizers, chat templates and image processing with tiny weights.
Each test pins a fact of the real models (measured with the real tokenizer files and processor
settings); a twin that drifts from the real model fails here."""

import json
import random

import pandas as pd
import pytest
import torch
from PIL import Image

from msr_utils import models, prompts, recommender, scoring, sft, summarize, twin
from tests.conftest import SAMPLE


def files_bytes(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def vlm(twin_dir):
    return models.load(twin_dir / twin.VLM_DIR, kind="vlm")


@pytest.fixture(scope="module")
def lm(twin_dir):
    return models.load(twin_dir / twin.LM_DIR, kind="lm")


def sample_titles(n=300):
    titles = pd.read_csv(SAMPLE / "microlens50k" / "MicroLens-50k_titles.csv", header=None, nrows=n)
    return titles.iloc[:, 1].astype(str).tolist()


def tricky_strings(n=400, seed=0):
    """Random strings over spaces, newlines, punctuation, accents, CJK, emoji (byte fallback)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ 0123456789 .,;:!?'\"()[]{}<>/\\-_\n\t  éüñçøß日本語中文😀🎉→€"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


# --- tokenizers: ids equal the real ones ----------------------------------------------------------

def test_mistral_ids_equal_sentencepiece_on_every_test_string():
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(twin.wheel_file(*twin.MISTRAL_FILE)))
    tok = twin.mistral_tokenizer()
    texts = sample_titles() + tricky_strings() + ["[INST] What is shown?\n [/INST]", " Yes", "  two  spaces"]  # no added token (<image>)
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), repr(text)
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), repr(text)
    assert tok("Hi")["input_ids"][0] == sp.bos_id() == 1  # BOS added, no EOS
    assert tok("Hi")["input_ids"][-1] != sp.eos_id()
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]


def test_llama3_ids_equal_tiktoken_on_every_test_string():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(twin.wheel_file(*twin.LLAMA3_FILE)))
    enc = tiktoken.Encoding("llama3", pat_str=twin.LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={t: 128000 + i for i, t in enumerate(twin.LLAMA3_SPECIAL)})
    tok = twin.llama3_tokenizer()
    texts = sample_titles() + tricky_strings(seed=1)
    texts.append("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == enc.encode(text, allowed_special="all"), repr(text)
    assert len(tok) == 128_256


def test_missing_wheel_file_names_the_package():
    with pytest.raises(twin.MissingWheelFile, match="'no-such-package'.*make env"):
        twin.wheel_file("no-such-package", "x/tokenizer.model")


# --- the saved twins -------------------------------------------------------------------------------

def test_build_is_deterministic_small_and_loads_like_a_hub_model(twin_dir, tmp_path):
    again = twin.build(tmp_path, seed=0)
    total = 0
    for kind, sub in [("vlm", twin.VLM_DIR), ("lm", twin.LM_DIR)]:
        first = files_bytes(twin_dir / sub)
        assert first == files_bytes(again[kind])  # same seed, same bytes
        total += sum(map(len, first.values()))
    assert total < 80e6  # tens of MB, built at run time (never committed)
    other = twin.build_vlm(seed=1)[0].state_dict()
    assert not torch.equal(other["model.language_model.embed_tokens.weight"],
                           twin.build_vlm(seed=0)[0].state_dict()["model.language_model.embed_tokens.weight"])


def test_twin_vlm_has_the_llava_1_6_mistral_geometry(vlm):
    config, proc = vlm.model.config, vlm.processor
    assert type(vlm.model).__name__ == "LlavaNextForConditionalGeneration"
    assert config.image_token_index == 32000 and config.text_config.vocab_size == 32064
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.vision_config.image_size == 336 and config.vision_config.patch_size == 14
    assert config.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    ip = proc.image_processor
    assert ip.size == {"shortest_edge": 336} and ip.crop_size == {"height": 336, "width": 336}
    assert list(ip.image_mean) == [0.48145466, 0.4578275, 0.40821073] and ip.do_pad and int(ip.resample) == 3
    assert proc.num_additional_image_tokens == 1 and proc.patch_size == 14


@pytest.mark.parametrize("size, n_tokens", [((1280, 720), 1948), ((720, 1280), 1968), ((500, 500), 2928),
                                            ((1000, 1000), 2928)])
def test_a_cover_expands_to_the_real_number_of_image_tokens(vlm, size, n_tokens):
    text = vlm.processor.apply_chat_template(prompts.user_message("Describe it.", True),
                                             add_generation_prompt=True, tokenize=False)
    enc = vlm.processor(text=[text], images=[Image.new("RGB", size, (90, 40, 10))], return_tensors="pt")
    assert int((enc["input_ids"] == 32000).sum()) == n_tokens
    assert tuple(enc["pixel_values"].shape) == (1, 5, 3, 336, 336)
    with torch.inference_mode():  # the model takes exactly that many image features
        assert vlm.model(**enc).logits.shape[1] == enc["input_ids"].shape[1]


def test_chat_templates_render_as_the_real_models(vlm, lm):
    user = prompts.user_message("Describe it.", True)
    assert vlm.processor.apply_chat_template(user, tokenize=False) == "[INST] <image>\nDescribe it. [/INST]"
    answered = user + [{"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}]
    assert vlm.processor.apply_chat_template(answered, tokenize=False).endswith("[/INST] Yes</s> ")
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": " Hi "}], add_generation_prompt=True,
                                            tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert lm.tokenizer.eos_token == "<|eot_id|>" and lm.tokenizer.eos_token_id == 128009
    assert lm.tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]


# --- facts in the recommender's own context --------------------------------------------------------

@pytest.mark.parametrize("order", prompts.ORDERS)
def test_answers_are_the_tokens_the_model_emits_after_inst(vlm, order):
    messages = prompts.recommendation_messages("The user likes cats.", "A cat", kind="video",
                                               image_token="<image>", order=order)
    ids = recommender.answer_token_ids(vlm.processor, vlm.tokenizer, messages)
    assert ids == {"Yes": 5592, "No": 1770}  # "▁Yes", "▁No"
    assert vlm.tokenizer.convert_tokens_to_ids(["Yes", "No"]) == [5613, 2501]  # what the official test reads
    suffix = sft.answer_suffixes(vlm.processor)
    assert suffix == {"Yes": " Yes</s>", "No": " No</s>"}  # the template's trailing space is not trained on
    prompt = recommender.chat_text(vlm.processor, messages)
    for answer, first in ids.items():
        p_ids = vlm.tokenizer(prompt)["input_ids"]
        full = vlm.tokenizer(prompt + suffix[answer])["input_ids"]
        assert full[:len(p_ids)] == p_ids and full[len(p_ids):] == [first, 2]  # prompt is a prefix; answer, </s>


def test_no_prompt_starts_with_two_bos(vlm, lm):
    prompt = recommender.chat_text(vlm.processor, prompts.recommendation_messages(
        "Likes cats.", "A cat", kind="video", image_token="<image>", order="image_first"))
    ids = scoring.encode(vlm, prompt, None).ids
    assert ids[:2] == [1, 733]  # <s> [INST]: the tokenizer adds BOS, the llava template writes none
    text = summarize.render(lm, prompts.user_message("Summarise."))
    assert text.startswith("<|begin_of_text|>") and text.count("<|begin_of_text|>") == 1
    assert scoring.encode(lm, text).ids[:2] == [128000, 128006]  # the template's BOS, not a second one


def test_user_summary_generation_stops_at_eot(lm):
    """A model that always predicts <|eot_id|> must stop after one token, not run to max_new_tokens."""
    head = lm.model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.zero_()
            head[128009] = 1.0  # every hidden state scores <|eot_id|> highest (no bias in lm_head)
        text = summarize.render(lm, prompts.user_message("Summarise the user."))
        inputs = lm.tokenizer([text], add_special_tokens=False, return_tensors="pt")
        out = lm.model.generate(**inputs, max_new_tokens=50, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 1 and out[0, -1] == 128009
        assert summarize.generate_batch(lm, [text], [None], {"max_new_tokens": 50, "do_sample": False}) == [""]
    finally:
        with torch.no_grad():
            head.copy_(saved)


def test_the_paper_max_length_holds_a_real_cover_and_a_long_preference(vlm, project):
    from msr_utils.config import load_params

    params = load_params(project / "params.yaml", {"base.profile": "paper"})
    preference = prompts.USER_ANSWER_START + " cats" * 1024  # a preference at the paper's 1024 new tokens
    prompt = recommender.chat_text(vlm.processor, prompts.recommendation_messages(
        preference, "A very long title " * 8, kind="video", image_token="<image>", order=params.recommender.order))
    counts = sft.image_token_counts(vlm.processor, {(1000, 1000), (1280, 720)})
    n_text = len(vlm.tokenizer(prompt + " Yes</s>")["input_ids"]) - 1  # the <image> marker expands below
    assert n_text + max(counts.values()) <= params.sft.max_length
    assert n_text + max(counts.values()) > 1024  # the official MAX_LENGTH truncated every example


def test_the_paper_texts_512_and_the_official_1024_cut_a_1280x720_cover_and_lose_the_answer(vlm):
    """shared/PAPER_NUMBERS.md: the paper's text says max length 512, the official code 1024 (its
    issue #2: image tokens truncated, training breaks), profile paper 4096."""
    study = twin.max_length_study(vlm)
    assert {k: v for k, v in study.items() if k != "max_length"} == {
        "cover": "1280x720", "prompt_tokens": 2070, "image_tokens": 1948, "text_tokens": 122, "answer_tokens": 2,
        "prompt_tokens_image_as_one_token": 123}  # 123 fit 512 only while <image> was one token
    at = study["max_length"]
    assert [at[n]["setting"] for n in ("512", "1024", "4096")] == ["paper text", "official code", "ours (profile: paper)"]
    assert [(at[n]["kept_tokens"], at[n]["image_tokens_kept"]) for n in at] == [(512, 507), (1024, 1019), (2070, 1948)]
    assert [at[n]["answer_survives"] for n in at] == [False, False, True]
    mismatch = "ValueError: Mismatch in `image` token count between text and `input_ids`"
    assert [at[n]["processor_truncation"] for n in at] == [mismatch, mismatch, "ok"]
    assert [at[n]["our_sft"] for n in at] == ["dropped (longer than sft.max_length)"] * 2 + ["kept"]
    text = recommender.chat_text(vlm.processor, prompts.recommendation_messages(
        twin.STUDY_PREFERENCE, twin.STUDY_TITLE, kind="video", image_token="<image>", order="image_first"))
    ids = vlm.tokenizer(text + " Yes</s>")["input_ids"]
    assert ids[-2:] == [5592, 2] and len(ids) == 123  # the answer is the last two tokens: right truncation cuts it


def test_twin_and_paper_profiles_differ_only_in_models_and_the_size_cut(project):
    from msr_utils.config import SIZE_KEYS, load_params

    resolved = {name: load_params(project / "params.yaml", {"base.profile": name}).model_dump(exclude={"root"})
                for name in ("twin", "paper")}
    flat = {name: pd.json_normalize(tree, sep=".").iloc[0].to_dict() for name, tree in resolved.items()}
    differ = {k for k in flat["paper"] if json.dumps(flat["paper"][k]) != json.dumps(flat["twin"].get(k))}
    assert differ == {"base.profile"} | {k for k in differ if k.startswith("profiles.")} | (differ & SIZE_KEYS)
    assert {"data.limit_users", "sft.limit"} <= differ  # the cut is real
    assert load_params(project / "params.yaml", {"base.profile": "twin"}).models_in_use.vlm == "data/models/twin-vlm"


def test_facts_about_the_official_code(twin_dir):
    f = twin.facts(twin_dir)
    assert f["vlm_answer_ids_after_inst"] == {"Yes": 5592, "No": 1770}
    assert f["vlm_convert_tokens_to_ids"] == {"Yes": 5613, "No": 2501}  # not the tokens emitted after [/INST]
    assert f["image_tokens"] == {"1280x720": 1948, "720x1280": 1968, "500x500": 2928}
    assert f["official_collate_1280x720_at_1024"].startswith("ValueError: Mismatch in `image` token count")
    assert f["max_length_1280x720"]["max_length"]["512"]["image_tokens_kept"] == 507
    assert f["official_close_tag_tokens"] == ["▁[\\", "INST", "]", "▁Yes"]
    assert f["template_close_tag_tokens"] == ["▁[", "/", "INST", "]", "▁Yes"]
    assert f["lm_hello_world"] == [9906, 1917] and f["lm_generation_eos_ids"] == [128001, 128009]


def test_the_paper_shape_has_the_checkpoints_parameter_count():
    """bench_paper_shape's model: llava-v1.6-mistral-7b-hf's sizes (7.57 B parameters on its model
    card), built on the meta device (no memory)."""
    with torch.device("meta"):
        model, processor = twin.build_vlm(0, "paper")
    assert sum(p.numel() for p in model.parameters()) == 7_566_747_648
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == 32000
    with pytest.raises(ValueError, match="shape='huge'"):
        twin.build_vlm(0, "huge")
