"""ImageNet labels of real images in a profile without a VLM (msr_utils.image_labels, stage 02)."""

import shutil
from functools import partial
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from msr_utils import image_labels, item_summaries, models, prompts, summarize, tiny
from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TITLE

# a real photograph shipped in matplotlib's wheel: Grace Hopper in her navy uniform
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def test_a_real_photo_gets_its_imagenet_class_and_a_broken_file_none(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = image_labels.top_labels({"hopper": PHOTO, "broken": tmp_path / "broken.jpg"})
    assert list(out) == ["hopper"] and len(out["hopper"]) == image_labels.TOP_K
    assert out["hopper"][0] == "military uniform"  # class 652; a shifted class list names another
    assert len(set(image_labels.class_names())) >= 998  # ImageNet-1k repeats two names (crane, maillot)


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return models.load(tiny_dir / tiny.LM_DIR, kind="lm")


def test_an_lm_reads_the_labels_of_a_real_image_and_never_of_a_placeholder(lm, tmp_path, monkeypatch):
    shutil.copy(PHOTO, tmp_path / "cover.jpg")
    items = pd.DataFrame([("real", "navy day", "cover.jpg", False), ("card", "a placeholder", "cover.jpg", True),
                          ("none", "no cover", None, False)], columns=[ITEM, TITLE, IMAGE_PATH, IMAGE_PLACEHOLDER])
    labels = image_labels.top_labels({"real": tmp_path / "cover.jpg"})
    seen = {}
    real_generate = summarize.generate_cached

    def spy(requests, *args, **kwargs):
        seen.update({r.key: prompts.text_contents(r.messages)[0]["content"] for r in requests})
        return real_generate(requests, *args, **kwargs)

    monkeypatch.setattr(summarize, "generate_cached", spy)
    out, stats = summarize.summarize_items(items, lm, tmp_path / "cache", image_root=tmp_path, max_new_tokens=4,
                                           labels=labels, progress=False)
    assert "An image classifier sees in its cover: military uniform, " in seen["real"] and "navy day" in seen["real"]
    assert "classifier" not in seen["card"] and "classifier" not in seen["none"]  # the title-only prompt
    assert stats["image_labels"] == 1 and not out["image_used"].any()  # no pixels reach the LM
    again = partial(summarize.summarize_items, items, lm, tmp_path / "cache", image_root=tmp_path, max_new_tokens=4,
                    progress=False)
    assert again(labels=labels)[1]["generated"] == 0
    assert again(labels={"real": ["suit"]})[1]["generated"] == 1  # another cover's labels: another summary


def test_only_real_images_are_labelled():
    items = pd.DataFrame([("real", "t", "a.jpg", False), ("card", "t", "a.jpg", True), ("none", "t", None, False),
                          ("empty", "t", "", False)], columns=[ITEM, TITLE, IMAGE_PATH, IMAGE_PLACEHOLDER])
    assert item_summaries.real_images(items, Path("/r")) == {"real": Path("/r/a.jpg")}
