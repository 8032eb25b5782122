"""Every prompt template in one place, each versioned by a short hash.

Templates are plain strings with `str.format` fields; builders return chat messages in the
multimodal content-list form ({"type": "image"} / {"type": "text"}) that `apply_chat_template` of
LLaVA / LLaVA-NeXT / Qwen2-VL processors accepts. Later stages add user-summary and recommender
templates below the item-summary ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

DATASET_KINDS = ("video", "product")

# --- item summaries (stage 02) -------------------------------------------------------------
# Video-cover wording follows the official code, YuyangYe/MLLM-MSR,
# MLLM-MSR/Inference/microlens/image_summary.py ("[INST] <image>\nPlease describe this image, which
# is a cover of a video. Provide a detailed description ... [/INST]"); the chat template supplies
# the [INST]/<image> markers. The title line is our addition (the paper's summaries see the title).
ITEM_SUMMARY_VIDEO = (
    "Please describe this image, which is a cover of a video titled \"{title}\". Provide a detailed "
    "description in one continuous paragraph, including content information and visual features "
    "such as colors, objects, text, and any notable elements present in the image."
)
# Amazon product images: same structure, product wording.
ITEM_SUMMARY_PRODUCT = (
    "Please describe this image, which shows a product titled \"{title}\". Provide a detailed "
    "description in one continuous paragraph, including the type of product, its appearance and "
    "visual features such as colors, materials, shape, text, and any notable elements present in "
    "the image."
)
# No usable image (missing, placeholder or unreadable): describe from the title alone.
ITEM_SUMMARY_VIDEO_TITLE_ONLY = (
    "A video is titled \"{title}\". Its cover image is not available. Based on the title alone, "
    "describe in one continuous paragraph what the video is likely about and what its cover would "
    "likely show."
)
ITEM_SUMMARY_PRODUCT_TITLE_ONLY = (
    "A product is titled \"{title}\". Its image is not available. Based on the title alone, "
    "describe in one continuous paragraph what the product likely is, what it is used for and what "
    "it likely looks like."
)
ITEM_SUMMARY_TEMPLATES = {
    ("video", True): ITEM_SUMMARY_VIDEO,
    ("video", False): ITEM_SUMMARY_VIDEO_TITLE_ONLY,
    ("product", True): ITEM_SUMMARY_PRODUCT,
    ("product", False): ITEM_SUMMARY_PRODUCT_TITLE_ONLY,
}


def prompt_hash(template_or_parts: str | Sequence[str]) -> str:
    """Short (12 hex) sha256 of a template, or of several parts (order matters)."""
    parts = [template_or_parts] if isinstance(template_or_parts, str) else list(template_or_parts)
    if not all(isinstance(p, str) for p in parts):
        raise TypeError(f"prompt_hash: expected str or a sequence of str, got {template_or_parts!r}")
    payload = parts[0] if len(parts) == 1 else json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def check_kind(kind: str) -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind={kind!r}: expected one of {DATASET_KINDS}")


def item_summary_template(kind: str, with_image: bool) -> str:
    """The item-summary template for a dataset kind ("video" | "product")."""
    check_kind(kind)
    return ITEM_SUMMARY_TEMPLATES[(kind, bool(with_image))]


def user_message(text: str, with_image: bool = False) -> list[dict]:
    """One user turn in content-list form, the image (if any) before the text."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def item_summary_messages(title: str, template: str, with_image: bool) -> list[dict]:
    """Chat messages asking for a summary of one item."""
    return user_message(template.format(title=title.strip()), with_image)


# --- user preference summaries (stage 03) -------------------------------------------------------
# Wording of the official code, YuyangYe/MLLM-MSR, Inference/microlens/preferece_inference_recurrent.py
# (blocks of item titles + cover descriptions, numbered within the block; the previous preference is
# fed to the next block). Nouns are dataset-aware ("video"/"cover" or "product"/"image").
IMAGE_NOUN = {"video": "cover", "product": "image"}
USER_ITEM_LINE = "{i}. Title - '{title}', {Noun} {image_noun} description - {summary}."
USER_ITEM_LINE_TITLE_ONLY = "{i}. Title - '{title}'."  # no item summary (item_summary.enabled: false)
USER_BLOCK_HEAD = "Below is a chronological list of {noun}s previously interacted with by the user:\n{items}\n"
USER_BLOCK_FIRST = "Based on the content and visual style of {noun}s listed above, "
USER_BLOCK_NEXT = ("We also know this user's previous preference.\n{previous}\n"
                   "Based on the content and visual style of {noun}s listed above as well as the known "
                   "aspects of user's preference, ")
USER_BLOCK_TAIL = ("please summarize the user's preferences in one continuous paragraph. Only provide "
                   "information about the user's preferences; do not repeat details about the previous "
                   "{noun}s. Do not repeat the question in your answer, and keep it clear and concise. "
                   "The answer should start with 'The user appears to have a preference for'.")
USER_ANSWER_START = "The user appears to have a preference for"
# Direct (non-recurrent) variant, the ablation: the whole history in one prompt.
USER_DIRECT_HEAD = USER_BLOCK_HEAD
USER_DIRECT_TAIL = ("Based on the {noun}s listed above, please summarize the user's preferences in terms of "
                    "both content and visual style in one continuous paragraph. Only provide information "
                    "about the user's preferences; do not repeat details about the previous {noun}s. Do not "
                    "repeat the question in your answer, and keep it clear and concise. The answer should "
                    "start with 'The user appears to have a preference for'.")
# `mode: titles` (TALLRec-style text-only baseline): no LLM, the history's titles are the preference.
USER_TITLES = "The user previously interacted with these {noun}s, oldest first:\n{items}"
# A row whose target is the user's first interaction: no history, no LLM call, this fixed text.
USER_EMPTY_HISTORY = "The user has no previous interactions, so no preference is known yet."
USER_TEMPLATES = (USER_ITEM_LINE, USER_ITEM_LINE_TITLE_ONLY, USER_BLOCK_HEAD, USER_BLOCK_FIRST,
                  USER_BLOCK_NEXT, USER_BLOCK_TAIL, USER_DIRECT_TAIL, USER_EMPTY_HISTORY, USER_TITLES)


def user_items_text(items: Sequence[tuple[str, str | None]], kind: str) -> str:
    """Numbered lines (1, 2, ... within the block) of (title, item summary or None = title only)."""
    check_kind(kind)
    lines = []
    for i, (title, summary) in enumerate(items, start=1):
        if summary is None:
            lines.append(USER_ITEM_LINE_TITLE_ONLY.format(i=i, title=title.strip()))
        else:
            lines.append(USER_ITEM_LINE.format(i=i, title=title.strip(), Noun=kind.capitalize(),
                                               image_noun=IMAGE_NOUN[kind], summary=summary.strip().rstrip(".")))
    return "\n".join(lines)


def user_titles_text(titles: Sequence[str], kind: str) -> str:
    """`mode: titles`: the history's titles, numbered 1..n, oldest first (the preference text itself)."""
    return USER_TITLES.format(noun=kind, items=user_items_text([(t, None) for t in titles], kind))


def user_block_prompt(items_text: str, previous: str | None, kind: str) -> str:
    """Recurrent step: s_1 = LLM(block_1) when `previous` is None, else s_k = LLM(s_{k-1}, block_k)."""
    middle = (USER_BLOCK_FIRST.format(noun=kind) if previous is None
              else USER_BLOCK_NEXT.format(previous=previous.strip(), noun=kind))
    return USER_BLOCK_HEAD.format(noun=kind, items=items_text) + middle + USER_BLOCK_TAIL.format(noun=kind)


def user_direct_prompt(items_text: str, kind: str) -> str:
    """Direct variant (ablation): the whole history in one prompt."""
    return USER_DIRECT_HEAD.format(noun=kind, items=items_text) + USER_DIRECT_TAIL.format(noun=kind)


# --- recommender: user preference + candidate -> Yes / No (stages 04, 05) ---------------------------
# Wording of the official code, train/microlens/dataset_create.py, with its typos fixed and the answer
# words matching what we score ("Yes"/"No"). Order differs from the official prompt on purpose: the
# user part (preference + the question and answer instruction) comes first and is identical for all
# of a user's candidates, so scoring encodes it once and shares it; the candidate part ([image],
# title, item summary) comes last. The image token is placed in the text by us (LLaVA-NeXT chat
# templates put images first, which would make the shared prefix candidate-specific).
ANSWERS = ("Yes", "No")
REC_USER = ("Based on the previous interaction history, the user's preference can be summarized as: {preference}\n"
            "Please predict whether this user would interact with the {noun} below at the next opportunity. "
            "Please only respond 'Yes' or 'No' based on your judgement, do not include any other content "
            "including words, space, and punctuation in your response.\n")
REC_CANDIDATE = "The {noun}'s title is '{title}'{image_clause}.{summary_clause}"
REC_IMAGE_CLAUSE = ", and the given image is this {noun}'s {image_noun}"
REC_SUMMARY_CLAUSE = " The {noun}'s {image_noun} shows: {summary}."
REC_TEMPLATES = (REC_USER, REC_CANDIDATE, REC_IMAGE_CLAUSE, REC_SUMMARY_CLAUSE)


def recommendation_parts(preference: str, title: str, *, kind: str, summary: str | None = None,
                         image_token: str | None = None) -> tuple[str, str]:
    """(user part, candidate part) of one recommender prompt; their concatenation is the whole user
    turn. With `image_token` (the processor's, e.g. "<image>") the candidate part starts with it."""
    check_kind(kind)
    nouns = {"noun": kind, "image_noun": IMAGE_NOUN[kind]}
    candidate = REC_CANDIDATE.format(
        title=title.strip(), noun=kind,
        image_clause=REC_IMAGE_CLAUSE.format(**nouns) if image_token else "",
        summary_clause=REC_SUMMARY_CLAUSE.format(summary=summary.strip().rstrip("."), **nouns) if summary else "")
    if image_token:
        candidate = f"{image_token}\n{candidate}"
    return REC_USER.format(preference=preference.strip(), noun=kind), candidate


def recommendation_messages(preference: str, title: str, *, kind: str, summary: str | None = None,
                            image_token: str | None = None) -> list[dict]:
    """One user turn holding user part + candidate part as a single text block."""
    return user_message("".join(recommendation_parts(preference, title, kind=kind, summary=summary,
                                                     image_token=image_token)))
