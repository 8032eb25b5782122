"""P("Yes") scoring: the shared-prefix path equals naive per-candidate scoring on the tiny models."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from msr_utils import models, prompts, recommender, scoring, tiny
from msr_utils.scoring import Encoded, shared_prefix_length

PREFERENCE = ("The user appears to have a preference for cooking videos with bright colors, funny cats, "
              "travel in the city at night and music with dance.")
TITLES = ["a red dress for summer", "funny cat plays with a ball", "music", "the city at night, a short film",
          "a plate of food and a smiling chef in a bright kitchen"]
SIZES = [(32, 32), (64, 32), (120, 60), (48, 96)]


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return {kind: models.load(tiny_dir / sub, kind=kind) for kind, sub in (("vlm", tiny.VLM_DIR), ("lm", tiny.LM_DIR))}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def examples(model: models.LoadedModel, with_image: bool, users: int = 2, order: str = "user_first",
             image_every: int = 2, image_per_item: bool = False) -> pd.DataFrame:
    """Candidates of `users` rows (5 each, different preferences); every `image_every`-th one with an
    image (the same one for an item when `image_per_item`, as in real data; else varied by user)."""
    image_token = getattr(model.processor, "image_token", None) if with_image else None
    rows = []
    for u in range(users):
        for c, title in enumerate(TITLES):
            image = image_token if c % image_every == 0 else None
            messages = prompts.recommendation_messages(f"{PREFERENCE} User {u}.", title, kind="video",
                                                       summary="a cat on a sofa" if c % 3 else None,
                                                       image_token=image, order=order)
            rows.append({"split": "test", "user_id": f"u{u}", "target_pos": 5, "item_id": f"i{c}",
                         "label": int(c == 0), "prompt": recommender.chat_text(model.processor, messages),
                         "image_path": f"{(c if image_per_item else u + c) % len(SIZES)}.png" if image else None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def naive(loaded, image_root):
    """Reference scores: each candidate's whole prompt alone, by (kind, with_image)."""
    return {(kind, img): scoring.score_examples(loaded[kind], examples(loaded[kind], img), image_root=image_root,
                                                method="naive", batch_size=1, progress=False)
            for kind, img in [("vlm", False), ("vlm", True), ("lm", False)]}


@pytest.mark.parametrize("kind, with_image", [("vlm", False), ("vlm", True), ("lm", False)])
def test_shared_prefix_equals_naive_per_candidate(loaded, image_root, naive, kind, with_image):
    model = loaded[kind]
    ex = examples(model, with_image)
    assert ex["image_path"].notna().any() == with_image
    shared = scoring.score_examples(model, ex, image_root=image_root, progress=False)
    np.testing.assert_allclose(shared, naive[kind, with_image], atol=1e-4, rtol=0)
    assert np.ptp(shared) > 1e-4  # candidates really differ: equality is not trivial


def test_batch_size_and_padding_side_do_not_change_scores(loaded, image_root, naive):
    model = loaded["vlm"]
    ex = examples(model, with_image=True)
    reference = naive["vlm", True]
    runs = [dict(method="shared", batch_size=1), dict(method="shared", batch_size=3),
            dict(method="naive", batch_size=4, padding_side="left"),
            dict(method="naive", batch_size=4, padding_side="right")]
    for kw in runs:
        got = scoring.score_examples(model, ex, image_root=image_root, progress=False, **kw)
        np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0, err_msg=str(kw))


def test_p_yes_is_the_softmax_of_the_two_answer_logits(loaded, image_root):
    model = loaded["vlm"]
    ex = examples(model, with_image=True, users=1)
    got = scoring.score_examples(model, ex, image_root=image_root, progress=False)
    both = scoring.score_examples(model, ex, image_root=image_root, progress=False, with_mass=True)
    yes, no = scoring.answer_ids(model)
    for i in (0, 1):  # with and without an image
        enc = scoring.encode(model, ex["prompt"][i], image_root / ex["image_path"][i] if i == 0 else None)
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([enc.ids]), **enc.vision).logits[0, -1]
        expected = torch.softmax(logits[[yes, no]], dim=-1)[0].item()
        assert got[i] == pytest.approx(expected, abs=1e-5)
        mass = torch.softmax(logits, dim=-1)[[yes, no]].sum().item()  # share of the whole vocabulary
        assert both[i, 1] == pytest.approx(mass, abs=1e-6)
    np.testing.assert_array_equal(both[:, 0], got)
    assert ((got > 0) & (got < 1)).all() and (both[:, 1] < 0.5).all()  # a random model rarely says Yes/No


def test_answer_ids_come_from_the_recommender_in_context(loaded, image_root, monkeypatch):
    model = loaded["lm"]
    yes, no = scoring.answer_ids(model)
    assert model.tokenizer.decode([yes]).strip() == "Yes" and model.tokenizer.decode([no]).strip() == "No"
    ex = examples(model, with_image=False, users=1)
    before = scoring.score_examples(model, ex, progress=False)
    swapped = {"Yes": no, "No": yes}
    monkeypatch.setattr(recommender, "answer_token_ids", lambda processor, tokenizer, messages=None: swapped)
    after = scoring.score_examples(model, ex, progress=False)
    np.testing.assert_allclose(after, 1 - before, atol=1e-6)


def test_shared_prefix_length():
    enc = lambda *seqs: [Encoded(list(s)) for s in seqs]  # noqa: E731
    assert shared_prefix_length(enc([1, 2, 3, 4], [1, 2, 3, 5])) == 3
    assert shared_prefix_length(enc([1, 2, 3], [1, 2, 3])) == 2  # each keeps its answer position
    assert shared_prefix_length(enc([1, 2, 3], [1, 2, 3, 4, 5])) == 2
    assert shared_prefix_length(enc([7, 2], [1, 2])) == 0
    assert shared_prefix_length(enc([1, 9, 9, 4], [1, 9, 9, 5]), stop_ids={9}) == 1  # never into an image
    assert shared_prefix_length(enc([1, 2, 3])) == 2


def test_image_tokens_are_never_in_the_shared_prefix(loaded, image_root):
    model = loaded["vlm"]
    ex = examples(model, with_image=True, users=1)
    # the same image everywhere: identical expanded image tokens in every image prompt
    encoded = [scoring.encode(model, p, image_root / "0.png" if has_image else None)
               for p, has_image in zip(ex["prompt"], ex["image_path"].notna())]
    n = shared_prefix_length(encoded, {model.model.config.image_token_id})
    assert model.model.config.image_token_id not in encoded[0].ids[:n]
    assert n > len(model.tokenizer(PREFERENCE)["input_ids"]) // 2  # the user part is shared


def test_unreadable_image_and_bad_method_fail_clearly(loaded, tmp_path):
    model = loaded["vlm"]
    ex = examples(model, with_image=True, users=1)
    (tmp_path / "0.png").write_bytes(b"not a png")
    with pytest.raises(FileNotFoundError, match="unreadable"):
        scoring.score_examples(model, ex, image_root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="method"):
        scoring.score_examples(model, ex, method="generate", progress=False)


@pytest.fixture(scope="module")
def twin_vlm(twin_dir):
    from msr_utils import twin

    return models.load(twin_dir / twin.VLM_DIR, kind="vlm")


@pytest.mark.parametrize("which", ["tiny", "twin"])
@pytest.mark.parametrize("image_every", [1, 2])  # every candidate with its cover / some text-only
def test_the_papers_image_first_order_scores_exactly(loaded, twin_vlm, image_root, which, image_every):
    """[INST] <image> + preference + title + question, the pairs of one candidate item grouped (the
    image in their shared prefix): every method and grouping equals one forward per candidate, on the
    tiny VLM and on the twin (real LLaVA-1.6 processing)."""
    model = loaded["vlm"] if which == "tiny" else twin_vlm
    ex = examples(model, with_image=True, users=3, order="image_first", image_every=image_every, image_per_item=True)
    assert ex["prompt"][0].removeprefix("<s>").startswith("[INST] <image>\nBased on the previous interaction")
    reference = scoring.score_examples(model, ex, image_root=image_root, method="naive", batch_size=1, progress=False)
    runs = [dict(order="image_first"), dict(order="image_first", batch_size=2), dict(order="user_first"),
            dict(method="naive", batch_size=5, padding_side="left")]
    for kw in runs:
        got = scoring.score_examples(model, ex, image_root=image_root, progress=False, **kw)
        np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0, err_msg=str(kw))
    assert np.ptp(reference) > 1e-6


def test_image_first_groups_encode_each_cover_once(loaded, image_root):
    model = loaded["vlm"]
    ex = examples(model, with_image=True, users=3, order="image_first", image_every=1, image_per_item=True)
    encoded = [scoring.encode(model, p, image_root / i) for p, i in zip(ex["prompt"], ex["image_path"])]
    image_id = model.model.config.image_token_id
    groups = {order: list(ex.groupby(cols, sort=False).indices.values())
              for order, cols in scoring.GROUP_COLUMNS.items()}
    naive = sum(len(e.ids) for e in encoded)
    by_item = scoring.forwarded_tokens(encoded, groups["image_first"], image_id)
    by_row = scoring.forwarded_tokens(encoded, groups["user_first"], image_id)
    image_tokens = sum(e.ids.count(image_id) for e in encoded)
    assert by_row > naive - image_tokens  # rows share no image: every cover is forwarded with each pair
    assert by_item <= naive - image_tokens * 2 / 3  # 3 pairs per item: each cover forwarded once
    one_item = [encoded[i] for i in groups["image_first"][0]]
    n = scoring.prefix_length(one_item, image_id)
    assert one_item[0].ids[:n].count(image_id) == one_item[0].ids.count(image_id)  # the whole cover
    assert "preference can be summarized as" in model.tokenizer.decode(one_item[0].ids[:n])


@pytest.mark.parametrize("which", ["tiny", "twin"])
def test_encode_gives_the_processors_ids_and_processes_each_image_once(loaded, twin_vlm, image_root, which, monkeypatch):
    model = loaded["vlm"] if which == "tiny" else twin_vlm
    ex = examples(model, with_image=True, users=2, order="image_first", image_every=1, image_per_item=True)
    for prompt, path in zip(ex["prompt"], ex["image_path"]):
        with Image.open(image_root / path) as im:
            real = model.processor(text=[prompt], images=[im.convert("RGB")],
                                   add_special_tokens=not prompt.startswith(model.tokenizer.bos_token))
        assert scoring.encode(model, prompt, image_root / path).ids == list(real["input_ids"][0])
    calls = []
    real_inputs = scoring.image_inputs
    monkeypatch.setattr(scoring, "image_inputs", lambda *a: calls.append(a[1]) or real_inputs(*a))
    scoring.score_examples(model, ex, image_root=image_root, order="image_first", progress=False)
    per_item = ex.drop_duplicates("item_id")["image_path"]
    assert sorted(calls) == sorted(image_root / p for p in per_item)  # once per item, not once per pair


def test_length_batches_forward_a_long_prompt_alone():
    lengths = [20, 31, 1700, 25, 40, 22]
    assert scoring.length_batches(lengths, batch_size=21) == [[0, 5, 3, 1, 4], [2]]  # shortest first
    batches = scoring.length_batches(lengths, batch_size=4)
    assert batches == [[0, 5, 3, 1], [4, 2]]  # a pair pads at most 2x: kept
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 2 * sum(lengths[i] for i in batch)
    assert scoring.length_batches([10] * 5, batch_size=21) == [[0, 1, 2, 3, 4]]
