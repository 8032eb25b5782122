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
WORDINGS = ("ours", "official")  # params item_summary.prompt / user_summary.prompt

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
# `item_summary.prompt: official` (the paper profile): the official video-cover prompt verbatim, the
# cover alone (no title); the product variant has the same shape (the official code has none).
ITEM_SUMMARY_VIDEO_OFFICIAL = (
    "Please describe this image, which is a cover of a video. Provide a detailed description in one continuous "
    "paragraph, including content information and visual features such as colors, objects, text, and any notable "
    "elements present in the image."
)
ITEM_SUMMARY_PRODUCT_OFFICIAL = (
    "Please describe this image, which shows a product. Provide a detailed description in one continuous "
    "paragraph, including the type of product, its appearance and visual features such as colors, materials, "
    "shape, text, and any notable elements present in the image."
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
# A real image and no VLM (the small profile): the title and the image's ImageNet labels (image_labels.py).
ITEM_SUMMARY_LABELS = {
    "video": ("A video is titled \"{title}\". An image classifier sees in its cover: {labels}. Based on the title "
              "and these labels, describe in one continuous paragraph what the video is likely about and what its "
              "cover shows."),
    "product": ("A product is titled \"{title}\". An image classifier sees in its image: {labels}. Based on the title "
                "and these labels, describe in one continuous paragraph what the product likely is, what it is used "
                "for and what it looks like."),
}
ITEM_SUMMARY_TEMPLATES = {
    ("video", True, "ours"): ITEM_SUMMARY_VIDEO,
    ("video", True, "official"): ITEM_SUMMARY_VIDEO_OFFICIAL,
    ("product", True, "ours"): ITEM_SUMMARY_PRODUCT,
    ("product", True, "official"): ITEM_SUMMARY_PRODUCT_OFFICIAL,
    **{(kind, False, w): t for kind, t in (("video", ITEM_SUMMARY_VIDEO_TITLE_ONLY),
                                          ("product", ITEM_SUMMARY_PRODUCT_TITLE_ONLY)) for w in WORDINGS},
}


def prompt_hash(template_or_parts: str | Sequence[str]) -> str:
    """Short (12 hex) sha256 of a template, or of several parts (order matters)."""
    parts = [template_or_parts] if isinstance(template_or_parts, str) else list(template_or_parts)
    if not all(isinstance(p, str) for p in parts):
        raise TypeError(f"prompt_hash: expected str or a sequence of str, got {template_or_parts!r}")
    payload = parts[0] if len(parts) == 1 else json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def check_kind(kind: str, wording: str = "ours") -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind={kind!r}: expected one of {DATASET_KINDS}")
    if wording not in WORDINGS:
        raise ValueError(f"prompt wording={wording!r}: expected one of {WORDINGS}")


def item_summary_template(kind: str, with_image: bool, wording: str = "ours") -> str:
    """The item-summary template for a dataset kind ("video" | "product"); the title-only prompt
    (no usable image) is ours in either wording: the official code drops items without a cover."""
    check_kind(kind, wording)
    return ITEM_SUMMARY_TEMPLATES[(kind, bool(with_image), wording)]


def user_message(text: str, with_image: bool = False) -> list[dict]:
    """One user turn in content-list form, the image (if any) before the text."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def text_contents(messages: list[dict]) -> list[dict]:
    """`messages` with each content list joined into its text parts (image parts dropped): the form
    text-only LMs' chat templates take (SmolLM2's ChatML and Llama 3's concatenate a string)."""
    return [{**m, "content": "".join(p["text"] for p in m["content"] if p["type"] == "text")}
            if isinstance(m["content"], list) else m for m in messages]


def item_summary_messages(title: str, template: str, with_image: bool, labels: Sequence[str] = ()) -> list[dict]:
    """Chat messages asking for a summary of one item (`labels`: its image's ImageNet labels, for
    ITEM_SUMMARY_LABELS)."""
    return user_message(template.format(title=title.strip(), labels=", ".join(labels)), with_image)


# --- user preference summaries (stage 03) -------------------------------------------------------
# Wording of the official code, YuyangYe/MLLM-MSR, Inference/microlens/preferece_inference_recurrent.py
# (blocks of item titles + cover descriptions, numbered within the block; the previous preference is
# fed to the next block). `ours` leaves out the raw user and item ids (numbers that mean nothing to the
# LLM) and is dataset-aware ("video"/"cover" or "product"/"image"); `official` (the paper profile) keeps
# them: "... previously watched by User 123:" and "1. 456: Title - ...". Typos of the official text
# fixed in both: "keep clear and concise.The answer" -> "keep it clear and concise. The answer", the
# space before the previous preference dropped, and the "[INST] " written into a Llama-3 chat dropped.
IMAGE_NOUN = {"video": "cover", "product": "image"}
VERB = {"video": "watched", "product": "purchased"}  # official wording: "previously watched by User ..."
USER_ITEM_LINE = "{i}. {id}Title - '{title}', {Noun} {image_noun} description - {summary}."
USER_ITEM_LINE_TITLE_ONLY = "{i}. {id}Title - '{title}'."  # no item summary (item_summary.enabled: false)
USER_BLOCK_HEAD = "Below is a chronological list of {noun}s previously interacted with by the user:\n{items}\n"
USER_BLOCK_HEAD_OFFICIAL = "Below is a chronological list of {noun}s previously {verb} by User {user}:\n{items}\n"
USER_BLOCK_FIRST = "Based on the content and visual style of {noun}s listed above, "
USER_BLOCK_NEXT = ("We also know this user's previous preference.\n{previous}\n"
                   "Based on the content and visual style of {noun}s listed above as well as the known "
                   "aspects of user's preference, ")
USER_BLOCK_TAIL = ("please summarize the user's preferences in one continuous paragraph. Only provide "
                   "information about the user's preferences; do not repeat details about the {seen}. "
                   "Do not repeat the question in your answer, and keep it clear and concise. "
                   "The answer should start with 'The user appears to have a preference for'.")
USER_ANSWER_START = "The user appears to have a preference for"
# Direct (non-recurrent) variant, the ablation: the whole history in one prompt (official:
# Inference/microlens/preferece_inference_direct.py, whose tail asks the same in its own words).
USER_DIRECT_TAIL = ("Based on the {noun}s listed above, please summarize the user's preferences in terms of "
                    "both content and visual style in one continuous paragraph. Only provide information "
                    "about the user's preferences; do not repeat details about the {seen}. Do not "
                    "repeat the question in your answer, and keep it clear and concise. The answer should "
                    "start with 'The user appears to have a preference for'.")
USER_DIRECT_TAIL_OFFICIAL = ("Based on the {noun}s listed, please summarize the user's preferences in terms of both "
                             "content and visual style within one continuous paragraph. Only provide information "
                             "about the user's preferences; do not repeat details about the {seen}. Do not "
                             "repeat the question in your answer.")
SEEN = {"ours": "previous {noun}s", "official": "previously {verb} {noun}s"}
USER_HEADS = {"ours": USER_BLOCK_HEAD, "official": USER_BLOCK_HEAD_OFFICIAL}
USER_DIRECT_TAILS = {"ours": USER_DIRECT_TAIL, "official": USER_DIRECT_TAIL_OFFICIAL}
# `mode: titles` (TALLRec-style text-only baseline): no LLM, the history's titles are the preference.
USER_TITLES = "The user previously interacted with these {noun}s, oldest first:\n{items}"
# A row whose target is the user's first interaction: no history, no LLM call, this fixed text.
USER_EMPTY_HISTORY = "The user has no previous interactions, so no preference is known yet."


def user_templates(mode: str, wording: str = "ours") -> tuple[str, ...]:
    """The templates a user-summary mode ("recurrent" | "direct") uses in a wording (for its hash)."""
    check_kind("video", wording)
    blocks = ((USER_DIRECT_TAILS[wording],) if mode == "direct"
              else (USER_BLOCK_FIRST, USER_BLOCK_NEXT, USER_BLOCK_TAIL))
    return (USER_ITEM_LINE, USER_ITEM_LINE_TITLE_ONLY, USER_HEADS[wording], SEEN[wording], *blocks)


def user_items_text(items: Sequence[tuple[str, str | None]], kind: str,
                    ids: Sequence[str] | None = None) -> str:
    """Numbered lines (1, 2, ... within the block) of (title, item summary or None = title only);
    with `ids` (the official wording) each line names its item id too."""
    check_kind(kind)
    lines = []
    for i, (title, summary) in enumerate(items, start=1):
        fields = {"i": i, "id": f"{ids[i - 1]}: " if ids is not None else "", "title": title.strip()}
        if summary is None:
            lines.append(USER_ITEM_LINE_TITLE_ONLY.format(**fields))
        else:
            lines.append(USER_ITEM_LINE.format(**fields, Noun=kind.capitalize(), image_noun=IMAGE_NOUN[kind],
                                               summary=summary.strip().rstrip(".")))
    return "\n".join(lines)


def user_titles_text(titles: Sequence[str], kind: str) -> str:
    """`mode: titles`: the history's titles, numbered 1..n, oldest first (the preference text itself)."""
    return USER_TITLES.format(noun=kind, items=user_items_text([(t, None) for t in titles], kind))


def _user_head(items_text: str, kind: str, wording: str, user: str | None) -> tuple[str, dict]:
    check_kind(kind, wording)
    if wording == "official" and user is None:
        raise ValueError("the official user-summary wording names the user: pass user=")
    nouns = {"noun": kind, "verb": VERB[kind]}
    seen = SEEN[wording].format(**nouns)
    return USER_HEADS[wording].format(items=items_text, user=user, **nouns), {**nouns, "seen": seen}


def user_block_prompt(items_text: str, previous: str | None, kind: str, wording: str = "ours",
                      user: str | None = None) -> str:
    """Recurrent step: s_1 = LLM(block_1) when `previous` is None, else s_k = LLM(s_{k-1}, block_k)."""
    head, nouns = _user_head(items_text, kind, wording, user)
    middle = (USER_BLOCK_FIRST.format(**nouns) if previous is None
              else USER_BLOCK_NEXT.format(previous=previous.strip(), **nouns))
    return head + middle + USER_BLOCK_TAIL.format(**nouns)


def user_direct_prompt(items_text: str, kind: str, wording: str = "ours", user: str | None = None) -> str:
    """Direct variant (ablation): the whole history in one prompt."""
    head, nouns = _user_head(items_text, kind, wording, user)
    return head + USER_DIRECT_TAILS[wording].format(**nouns)


# --- recommender: user preference + candidate -> Yes / No (stages 04, 05) ---------------------------
# Wording of the official code, train/microlens/dataset_create.py + train_llava_sft.py:
#   "[INST] <image>\n" + "Based on the previous interaction history, the user's preference can be summarized
#   as: {}Please predict whether this user would interact with the video at the next opportunity. The
#   video's title is'{}', and the given image is this video's cover? Please only response 'yes' or 'no'
#   based on your judgement, do not include any other content including words, space, and punctuations in
#   your response." + " [\\INST] " + answer
# Typos fixed (both orders): a line break after the preference (the official text runs it into "Please");
# "title is'{}'" -> "title is '{}'"; "cover?" -> "cover."; "only response" -> "only respond"; 'yes'/'no' ->
# 'Yes'/'No' (the answers it trains on and we score); "punctuations" -> "punctuation"; "[\\INST]" (a
# backslash) -> the chat template's "[/INST]".
# Two orders (params recommender.order), one builder:
# - image_first (the paper's): the candidate's image, then preference, title, question. The image goes in
#   as a content part, so the chat template renders "[INST] <image>\n" first, as the official prompt.
# - user_first (ours): the user part (preference + question) first, identical for all of a row's
#   candidates, so scoring encodes it once; then the candidate: [image token], title, [item summary].
ANSWERS = ("Yes", "No")
ORDERS = ("user_first", "image_first")
REC_PREFERENCE = "Based on the previous interaction history, the user's preference can be summarized as: {preference}\n"
REC_QUESTION = "Please predict whether this user would interact with the {noun}{where} at the next opportunity. "
REC_RULE = ("Please only respond 'Yes' or 'No' based on your judgement, do not include any other content "
            "including words, space, and punctuation in your response.")
REC_CANDIDATE = "The {noun}'s title is '{title}'{image_clause}.{summary_clause}"
REC_IMAGE_CLAUSE = ", and the given image is this {noun}'s {image_noun}"
REC_SUMMARY_CLAUSE = " The {noun}'s {image_noun} shows: {summary}."
REC_TEMPLATES = (REC_PREFERENCE, REC_QUESTION, REC_RULE, REC_CANDIDATE, REC_IMAGE_CLAUSE, REC_SUMMARY_CLAUSE)


def _candidate(title: str, kind: str, summary: str | None, with_image: bool) -> str:
    nouns = {"noun": kind, "image_noun": IMAGE_NOUN[kind]}
    return REC_CANDIDATE.format(
        title=title.strip(), noun=kind, image_clause=REC_IMAGE_CLAUSE.format(**nouns) if with_image else "",
        summary_clause=REC_SUMMARY_CLAUSE.format(summary=summary.strip().rstrip("."), **nouns) if summary else "")


def recommendation_parts(preference: str, title: str, *, kind: str, summary: str | None = None,
                         image_token: str | None = None) -> tuple[str, str]:
    """user_first: (user part, candidate part) of one recommender prompt; their concatenation is the
    whole user turn. With `image_token` (the processor's, e.g. "<image>") the candidate part starts with it."""
    check_kind(kind)
    user = (REC_PREFERENCE.format(preference=preference.strip()) + REC_QUESTION.format(noun=kind, where=" below")
            + REC_RULE + "\n")
    candidate = _candidate(title, kind, summary, bool(image_token))
    return user, f"{image_token}\n{candidate}" if image_token else candidate


def recommendation_messages(preference: str, title: str, *, kind: str, summary: str | None = None,
                            image_token: str | None = None, order: str = "user_first") -> list[dict]:
    """One user turn. user_first: user part + candidate part as a single text block (the image token
    written in it); image_first: an image part (when `image_token` is given), then preference, the
    candidate's title [and summary] and the question, in the official order."""
    if order == "user_first":
        return user_message("".join(recommendation_parts(preference, title, kind=kind, summary=summary,
                                                         image_token=image_token)))
    if order != "image_first":
        raise ValueError(f"recommender order={order!r}: expected one of {ORDERS}")
    check_kind(kind)
    text = (REC_PREFERENCE.format(preference=preference.strip()) + REC_QUESTION.format(noun=kind, where="")
            + _candidate(title, kind, summary, bool(image_token)) + " " + REC_RULE)
    return user_message(text, with_image=bool(image_token))
