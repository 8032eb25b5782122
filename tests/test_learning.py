"""Fine-tuning provably learns: a signal the tiny model can learn, through the project's own stage code.

Every user's preference names one colour; the positive candidate's title carries it, the negatives'
titles carry other colours. The rows are written as the stage files (split tables, items, user
preferences) in a scratch project; then stage 04 (`sft.run`: examples, prompt-masked labels, LoRA,
adapter saved) and stage 05 (`evaluate.run`: adapter reloaded, P(Yes) scoring, metrics) run
unchanged on them. The random base model ranks the held-out test rows at chance, the fine-tuned
one almost perfectly; patched runs show the check fails for the bugs that matter: labels shifted by
one position, and P(Yes) read from another token than the one the model learns to emit.

Every preference names the same colour. With a colour per user (the model must match the preference
against the title) the 2-layer tiny model had learned nothing after 480 steps; one colour is learned
in 30-60 of the 192 steps here.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from msr_utils import evaluate, models, scoring, sft, tiny
from msr_utils.config import load_params
from msr_utils.data.schema import CANDIDATES, HISTORY, IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TARGET, TARGET_POS, USER
from msr_utils.paths import artifacts
from tests.conftest import new_project, set_params

pytestmark = pytest.mark.usefixtures("one_thread")  # 54 s instead of 206 s on a busy 2-core box
DATASET = "microlens50k"
COLOUR, OTHERS = "red", ["blue", "green", "yellow"]  # one token each in the tiny tokenizer
THINGS = ["shoe", "dress", "bag", "car", "book", "phone", "house", "tree"]
ROWS = {"train": 64, "valid": 8, "test": 24}  # held out: test rows are other users, never trained on
NEG_TEST = 5  # negatives per valid/test row (train rows have one)
BAR = 0.9  # fine-tuned AUC on the test rows
MASS = 0.5  # fine-tuned P(Yes) + P(No) over the whole vocabulary at the answer position
SETTINGS = {"sft": {"lr": 5.0e-3, "epochs": 6, "batch_size": 4, "logging_steps": 4, "save_steps": 1000,
                    "candidate_summary": False},
            "eval": {"ks": [1, 3]}}
# The recommender prompts the check runs with (params sections on top of SETTINGS).
PROMPTS = {
    "image_last": {"sft": {"candidate_image": True}},  # user_first: user part, then [image] title
    "image_first": {"sft": {"candidate_image": True}, "recommender": {"order": "image_first"}},  # the paper's
    "text_only": {"sft": {"candidate_image": False}},
}


def colour_rows(n_rows: int, negatives: int, rng: np.random.Generator, first_user: int) -> pd.DataFrame:
    """Split rows (one per user) whose target is a COLOUR thing and whose negatives are other colours."""
    rows = []
    for u in range(first_user, first_user + n_rows):
        target = f"{COLOUR}-{rng.choice(THINGS)}"
        negs = [f"{rng.choice(OTHERS)}-{thing}" for thing in rng.choice(THINGS, negatives, replace=False)]
        rows.append({USER: f"u{u}", TARGET: target, TARGET_POS: 1, HISTORY: [], CANDIDATES: [target, *negs]})
    return pd.DataFrame(rows)


def colour_project(root, models_dir, **sections):
    """A scratch project holding stage 01-03 outputs of the colour task and a link to the tiny models."""
    new_project(root)
    set_params(root, **SETTINGS)
    set_params(root, **sections)
    params = load_params(root / "params.yaml")
    (root / "data" / "models").symlink_to(models_dir)
    p = artifacts(params, DATASET)
    p["processed"].mkdir(parents=True)
    p["preferences"].parent.mkdir(parents=True)
    (root / "data" / "images").mkdir()
    rng = np.random.default_rng(0)
    items = []
    for colour in [COLOUR, *OTHERS]:
        for thing in THINGS:
            item = f"{colour}-{thing}"
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noise: only the title tells
            Image.fromarray(pixels).save(root / "data" / "images" / f"{item}.png")
            items.append({ITEM: item, "title": f"a {colour} {thing}", "description": None,
                          IMAGE_PATH: f"data/images/{item}.png", "image_url": None, IMAGE_PLACEHOLDER: False})
    pd.DataFrame(items).to_parquet(p["items"])
    prefs, first = [], 0
    for split, n in ROWS.items():
        rows = colour_rows(n, 1 if split == "train" else NEG_TEST, rng, first)
        rows.to_parquet(p[split])
        prefs.append(rows[[USER, TARGET_POS]].assign(
            split=split, preference=f"The user appears to have a preference for {COLOUR} things."))
        first += n
    pd.concat(prefs).to_parquet(p["preferences"])
    p["info"].write_text(json.dumps({"noun": "video", "neg_eval": NEG_TEST}))
    return params


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("models"), seed=0)["vlm"].parent


@pytest.fixture(scope="module")
def learned(tmp_path_factory, models_dir):
    """prompt -> (params, sft metrics, stage-05 metrics) of a clean run, trained once per module."""
    runs = {}

    def run(prompt):
        if prompt not in runs:
            params = colour_project(tmp_path_factory.mktemp(prompt), models_dir, **PROMPTS[prompt])
            trained = sft.run(params, DATASET, progress=False)
            runs[prompt] = params, trained.metrics, evaluate.run(params, DATASET)["metrics"]
        return runs[prompt]
    return run


@pytest.mark.parametrize("prompt", PROMPTS)
def test_fine_tuning_learns_what_zero_shot_cannot(learned, prompt):
    params, trained, scored = learned(prompt)
    zero, tuned = scored["zero_shot"], scored["fine_tuned"]
    assert abs(zero["auc"] - 0.5) <= 0.15 and tuned["auc"] >= BAR and tuned["n_groups"] == ROWS["test"]
    assert tuned["answer_mass"] >= MASS > zero["answer_mass"]  # it answers with the tokens P(Yes) reads
    assert trained["train_with_image"] == (2 * ROWS["train"] if params.sft.candidate_image else 0)
    assert trained["valid_auc_fine_tuned"] >= BAR and trained["valid_answer_mass_fine_tuned"] >= MASS  # stage 04
    assert trained["train_loss_last"] < 0.8 and trained["eval_loss"] < 0.8  # Yes/No + end token learned


def test_labels_shifted_by_one_position_are_caught(tmp_path, models_dir, monkeypatch):
    """Labels moved one token left (a second shift on top of the model's own): the loss is taken one
    position early, and the position P(Yes) is read from never learns the answer."""
    collate = sft.Collator.__call__

    def shifted(self, batch):
        enc = collate(self, batch)
        enc["labels"] = torch.cat([enc["labels"][:, 1:], torch.full_like(enc["labels"][:, :1], sft.IGNORE)], 1)
        enc["logits_to_keep"], enc["shift_labels"] = sft.answer_positions(enc["labels"])  # what the loss reads
        return enc

    monkeypatch.setattr(sft.Collator, "__call__", shifted)
    params = colour_project(tmp_path, models_dir, **PROMPTS["image_last"])
    sft.run(params, DATASET, progress=False)
    assert evaluate.run(params, DATASET)["metrics"]["fine_tuned"]["auc"] < BAR


def scored_here(params, dataset: str) -> dict:
    """Stage 05's metrics with its variants scored in this process (eval.workers 1), where a
    monkeypatch reaches the scorer (spawned workers import the module afresh)."""
    here = params.model_copy(update={"eval": params.eval.model_copy(update={"workers": 1})})
    return evaluate.run(here, dataset)["metrics"]


def test_reading_the_no_token_as_yes_is_caught(learned, monkeypatch):
    """P(Yes) taken from the other answer's logit (answer ids in the wrong order)."""
    params, _, _ = learned("image_last")
    right = scoring.answer_ids
    monkeypatch.setattr(scoring, "answer_ids", lambda loaded: right(loaded)[::-1])
    assert scored_here(params, DATASET)["fine_tuned"]["auc"] < BAR


def test_reading_a_token_the_model_never_emits_is_caught(learned, monkeypatch):
    """"Yes"/"No" without the leading space, as the official code's convert_tokens_to_ids('Yes'), where
    the template puts " Yes"/" No" after "[/INST]". Their logits move with the learned direction only
    by chance (the AUC lands near 0 or near 1, depending on the run), so the check is the answer mass:
    the model puts almost none of its next-token probability on them."""
    params, _, _ = learned("image_last")
    tokenizer = models.load_profile(params, "vlm").tokenizer
    wrong = tuple(tokenizer.convert_tokens_to_ids(["Yes", "No"]))
    assert tokenizer.unk_token_id not in wrong and tokenizer.decode(wrong) == "YesNo"
    monkeypatch.setattr(scoring, "answer_ids", lambda loaded: wrong)
    assert scored_here(params, DATASET)["fine_tuned"]["answer_mass"] < 0.01
