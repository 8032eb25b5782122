"""Prompt templates: variants, builders, hashes, rendering through the tiny chat template."""

import re

import pytest

from msr_utils import prompts, tiny

VARIANTS = [(kind, w) for kind in prompts.DATASET_KINDS for w in (True, False)]


def test_every_variant_formats_the_title_and_has_its_own_hash():
    hashes = set()
    for kind, with_image in VARIANTS:
        template = prompts.item_summary_template(kind, with_image)
        assert "Funny cat" in template.format(title="Funny cat")
        hashes.add(prompts.prompt_hash(template))
    assert len(hashes) == len(VARIANTS)


def test_video_prompt_keeps_the_official_wording():
    video = prompts.item_summary_template("video", True)
    assert video.startswith("Please describe this image, which is a cover of a video")
    assert "including content information and visual features such as colors, objects, text," in video
    assert "product" in prompts.item_summary_template("product", True)
    assert "not available" in prompts.item_summary_template("product", False)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind='music'"):
        prompts.item_summary_template("music", True)


def test_prompt_hash_is_short_stable_and_sensitive():
    h = prompts.prompt_hash("Describe {title}.")
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert h == prompts.prompt_hash("Describe {title}.") == prompts.prompt_hash(["Describe {title}."])
    assert h != prompts.prompt_hash("Describe {title}!")
    assert prompts.prompt_hash(["a", "b"]) != prompts.prompt_hash(["b", "a"])
    assert prompts.prompt_hash(["ab", "c"]) != prompts.prompt_hash(["a", "bc"])
    with pytest.raises(TypeError):
        prompts.prompt_hash(["a", 3])


def test_messages_put_the_image_first_and_strip_the_title():
    msgs = prompts.item_summary_messages("  Cat video ", prompts.ITEM_SUMMARY_VIDEO, True)
    assert [m["role"] for m in msgs] == ["user"]
    content = msgs[0]["content"]
    assert content[0] == {"type": "image"} and content[1]["type"] == "text"
    assert '"Cat video"' in content[1]["text"]
    text_only = prompts.item_summary_messages("Cat video", prompts.ITEM_SUMMARY_VIDEO_TITLE_ONLY, False)
    assert [c["type"] for c in text_only[0]["content"]] == ["text"]


def test_rendered_prompts_through_the_tiny_chat_template():
    tok = tiny.train_tokenizer()
    for kind, with_image in VARIANTS:
        msgs = prompts.item_summary_messages("A title", prompts.item_summary_template(kind, with_image),
                                             with_image)
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert text.count("<image>") == int(with_image)
        assert text.startswith("<s>[INST] ") and text.endswith(" [/INST]")
