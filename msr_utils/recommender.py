"""The recommender's prompt as the model sees it: one builder for fine-tuning (stage 04) and
scoring (stage 05), so both see exactly the same text and the same answer tokens.

A candidate row becomes a chat prompt (the model's own chat template, generation prompt added) in
one of two orders (params recommender.order, prompts.recommendation_messages): user_first = the user
preference and question, then [image token], candidate title and item summary; image_first (the
paper's) = the candidate's image, then preference, title [and summary] and question. The answer is "Yes"
or "No"; its token id is read from the tokenizer in the exact context it follows (after the
assistant prefix), never hard-coded.
"""

from __future__ import annotations


import pandas as pd
from transformers import PreTrainedTokenizerBase

from msr_utils import prompts
from msr_utils.data.schema import CANDIDATES, IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TARGET_POS, TITLE, USER

LABEL, PROMPT, SPLIT, PREFERENCE = "label", "prompt", "split", "preference"
EXAMPLE_COLUMNS = [SPLIT, USER, TARGET_POS, ITEM, LABEL, PROMPT, IMAGE_PATH]


def chat_text(processor, messages: list[dict], answer: str | None = None) -> str:
    """The chat template rendered as text: with `answer`, the finished conversation; without, the
    prompt that ends where the assistant's answer starts. A text LM's tokenizer (no processor) gets
    string contents, as `summarize.render` gives it."""
    if answer is not None:
        messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    if isinstance(processor, PreTrainedTokenizerBase):
        messages = prompts.text_contents(messages)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)


def answer_token_ids(processor, tokenizer, messages: list[dict] | None = None) -> dict[str, int]:
    """{"Yes": id, "No": id}: the first token each answer adds after the generation prompt.

    Fails if the prompt's tokens are not a prefix of the answered conversation's tokens (the
    template puts something between them) or if the two answers share their first token."""
    messages = messages or prompts.user_message("Will the user like it?")
    prompt_ids = tokenizer(chat_text(processor, messages), add_special_tokens=False)["input_ids"]
    ids = {}
    for answer in prompts.ANSWERS:
        full = tokenizer(chat_text(processor, messages, answer), add_special_tokens=False)["input_ids"]
        if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            raise ValueError(f"answer {answer!r}: the chat template of {tokenizer.name_or_path!r} does not "
                             "continue the generation prompt with the answer; cannot locate its token")
        ids[answer] = full[len(prompt_ids)]
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"answers {prompts.ANSWERS} start with the same token in {tokenizer.name_or_path!r}")
    return ids


def examples(rows: pd.DataFrame, preferences: pd.DataFrame, items: pd.DataFrame,
             item_summaries: pd.DataFrame | None, processor, *, kind: str, split: str,
             with_image: bool, placeholder_images: bool = True, order: str = "user_first") -> pd.DataFrame:
    """One row per (split row, candidate): EXAMPLE_COLUMNS; label 1 for the target.

    rows: a split table (user_id, target_pos, candidates); preferences: user_preferences.parquet
    (split, user_id, target_pos, preference); item_summaries: None = titles only (ablation).
    A candidate without a usable image (missing, or a placeholder when placeholder_images is
    False) gets the text-only prompt; image_path is then None."""
    prefs = preferences[preferences[SPLIT] == split].set_index([USER, TARGET_POS])[PREFERENCE]
    keys = pd.MultiIndex.from_arrays([rows[USER], rows[TARGET_POS]])
    missing = keys.difference(prefs.index)
    if len(missing):
        raise ValueError(f"no user preference for {len(missing)} {split} row(s), e.g. {missing[0]}; "
                         "run stage 03 (user summaries) for this split")
    long = rows[[USER, TARGET_POS, CANDIDATES]].explode(CANDIDATES).rename(columns={CANDIDATES: ITEM})
    long[LABEL] = (~long.index.duplicated(keep="first")).astype("int64")  # candidates[0] is the target
    long = long.reset_index(drop=True)
    info = items.set_index(ITEM)
    summary = (item_summaries.set_index(ITEM)["summary"] if item_summaries is not None
               else pd.Series(dtype="str"))
    usable = info[IMAGE_PATH].notna() & (placeholder_images | ~info[IMAGE_PLACEHOLDER].astype(bool))
    image_token = getattr(processor, "image_token", None) if with_image else None

    prompt_col, image_col = [], []
    for user, pos, item in zip(long[USER], long[TARGET_POS], long[ITEM]):
        use_image = bool(image_token) and bool(usable.get(item, False))
        messages = prompts.recommendation_messages(
            prefs[(user, pos)], info.at[item, TITLE], kind=kind, summary=summary.get(item),
            image_token=image_token if use_image else None, order=order)
        prompt_col.append(chat_text(processor, messages))
        image_col.append(info.at[item, IMAGE_PATH] if use_image else None)
    long[PROMPT], long[IMAGE_PATH], long[SPLIT] = prompt_col, image_col, split
    return long[EXAMPLE_COLUMNS]
