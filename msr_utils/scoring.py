"""P("Yes") scoring of recommender prompts: one forward pass per candidate, no generate().

score = softmax over the (Yes, No) answer-token logits at the last prompt token (the answer
position). The answer ids come from `recommender.answer_token_ids`, never hard-coded. The answer
mass, P(Yes) + P(No) over the whole vocabulary at that position, says whether the scored tokens are
the ones the model answers with (near 1 once it has learned the format; near 0 when scoring reads
tokens the model never emits there, which leaves the AUC unpredictable, not necessarily low).

Two exact paths over the same tokens:
- `shared` (default): prompts that begin alike are grouped and their longest common token prefix
  (leaving at least one token per prompt) is encoded once; its KV cache is copied across a batch of
  right-padded suffixes, and each row's logit is read at its last real token. The grouping follows
  the prompt order (params recommender.order): `user_first` groups the candidates of one evaluation
  row (they share the user part; the prefix stops before any image token and image-bearing suffixes
  carry their own pixel_values); `image_first` groups every (row, candidate) pair of one candidate
  item: they share `[BOS][INST] <image tokens>` and the text up to the preference, so the prefix runs
  through the image, which is encoded once per item for all users.
- `naive`: each candidate's whole prompt alone (batch_size 1), or padded batches of whole prompts
  (right or left padding; left padding gets explicit position ids).
Both give the same scores up to float rounding (tested). `forwarded_tokens` counts what each method
feeds the model, without running it.

A bf16 model's output layer runs in fp32 while scoring (`fp32_head`): bf16 logits near 20 are spaced
0.125 apart, which rounds P(Yes) of different candidates to the same few values (ties in every metric).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from msr_utils import launch, recommender
from msr_utils.data.schema import IMAGE_PATH, ITEM, TARGET_POS, USER
from msr_utils.models import LoadedModel
from msr_utils.summarize import load_image

METHODS = ("shared", "naive")


@contextmanager
def fp32_head(model):
    """The output layer in fp32 on the (rounded) last hidden state of a bf16 / fp16 model; nothing
    changes for an fp32 model. The weights stay as they are (the head may be tied to the embedding)."""
    head = model.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        yield
        return
    bias = None if head.bias is None else head.bias.float()
    hook = head.register_forward_hook(
        lambda module, args, out: torch.nn.functional.linear(args[0].float(), module.weight.float(), bias))
    try:
        yield
    finally:
        hook.remove()


# Prompts that begin alike, by prompt order: one evaluation row's candidates / one candidate item's pairs.
GROUP_COLUMNS = {"user_first": [recommender.SPLIT, USER, TARGET_POS], "image_first": [ITEM]}


@dataclass
class Encoded:
    """One tokenized prompt: token ids (image tokens expanded), its vision inputs and image, if any."""
    ids: list[int]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_sizes, ...
    image: str | None = None  # the image file: prompts with the same one may share it in their prefix


def answer_ids(loaded: LoadedModel) -> tuple[int, int]:
    """(Yes id, No id) as the tokenizer writes them after the generation prompt."""
    ids = recommender.answer_token_ids(loaded.processor, loaded.tokenizer)
    return ids["Yes"], ids["No"]


def encode(loaded: LoadedModel, prompt: str, image_path: Path | None = None,
           images: dict[str, tuple[dict, int]] | None = None) -> Encoded:
    """Tokenize one prompt exactly as a lone forward would see it: the image marker expanded into the
    image's feature tokens, as the processor does. `images` caches each image's processed inputs by
    path (the pairs of one candidate item share its cover: processed once)."""
    bos = loaded.tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))  # chat templates usually write BOS already
    ids = loaded.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    if image_path is None:
        return Encoded(ids)
    if loaded.kind != "vlm":
        raise ValueError(f"prompt has an image ({image_path}) but model {loaded.model_ref!r} is a text LM")
    key = str(image_path)
    cached = (images or {}).get(key) or image_inputs(loaded, Path(image_path))
    if images is not None:
        images[key] = cached
    vision, n_tokens = cached
    return Encoded(expand_image(ids, loaded.tokenizer.convert_tokens_to_ids(loaded.processor.image_token), n_tokens),
                   vision, key)


def image_inputs(loaded: LoadedModel, image_path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """One image through the processor: its vision inputs and the number of tokens it expands to."""
    image = load_image(image_path)
    if image is None:
        raise FileNotFoundError(f"candidate image {image_path} is missing or unreadable; rerun stage 01 "
                                "(it writes placeholders for missing images) or set sft.candidate_image: false")
    marker = loaded.processor.image_token
    out = loaded.processor(text=[marker], images=[image], add_special_tokens=False, return_tensors="pt")
    vision = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    if "pixel_values" in vision and vision["pixel_values"].dim() == 5:  # LLaVA-NeXT: (1, patches, C, H, W)
        vision["pixel_values"] = vision["pixel_values"][0]
    return vision, int((out["input_ids"][0] == loaded.tokenizer.convert_tokens_to_ids(marker)).sum())


def expand_image(ids: list[int], image_id: int, n_tokens: int) -> list[int]:
    """`ids` with its one image marker replaced by `n_tokens` image tokens (what the processor writes:
    the marker is an added token, so the text around it tokenizes the same)."""
    if ids.count(image_id) != 1:
        raise ValueError(f"expected one image marker (id {image_id}) in the prompt, found {ids.count(image_id)}")
    at = ids.index(image_id)
    return ids[:at] + [image_id] * n_tokens + ids[at + 1:]


def shared_prefix_length(encoded: list[Encoded], stop_ids: set[int] = frozenset()) -> int:
    """Tokens every prompt starts with, cut before the first `stop_ids` token (image tokens) and
    leaving each prompt at least one token of its own (the answer position)."""
    n = min(len(e.ids) for e in encoded) - 1
    first = encoded[0].ids
    for e in encoded[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first, e.ids)) if a != b), n))
    return next((i for i, t in enumerate(first[:n]) if t in stop_ids), max(n, 0))


def prefix_length(encoded: list[Encoded], image_id: int | None) -> int:
    """The prefix `score_shared` encodes once: the common prefix, running through image tokens only
    when every prompt carries the same image and the prefix holds all of its tokens (else it stops
    before the first image token)."""
    stop = {image_id} if image_id is not None else set()
    n = shared_prefix_length(encoded)
    same_image = encoded[0].image is not None and all(e.image == encoded[0].image for e in encoded)
    first = encoded[0].ids
    if same_image and stop and not any(t in stop for t in first[n:]):
        return n
    return shared_prefix_length(encoded, stop)


def forwarded_tokens(encoded: list[Encoded], groups, image_id: int | None) -> int:
    """Tokens the shared method feeds the model for `groups` (lists of indices into `encoded`): each
    group's prefix once plus every prompt's suffix. The naive method feeds sum(len(e.ids))."""
    total = 0
    for rows in groups:
        part = [encoded[i] for i in rows]
        n = prefix_length(part, image_id)
        total += n + sum(len(e.ids) - n for e in part)
    return total


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), padded to the longest sequence on `side`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[row, cols], mask[row, cols] = torch.tensor(s), 1
    return ids, mask


def _vision_batch(encoded: list[Encoded], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Vision inputs of a batch: each key concatenated over the prompts that have an image."""
    with_image = [e.vision for e in encoded if e.vision]
    out = {k: torch.cat([v[k] for v in with_image]).to(device) for k in (with_image[0] if with_image else {})}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def _p_yes(model, answers: tuple[int, int], ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor,
           **kwargs) -> np.ndarray:
    """(P(Yes), answer mass) at column `last` of each row, shape (batch, 2), from one forward pass that
    keeps only the needed logits."""
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=last[:, None], use_cache="cache" in kwargs,
                   **kwargs).logits[:, 0].float()  # (batch, vocab): one position per row
    p_yes = torch.softmax(logits[:, list(answers)], dim=-1)[:, 0]
    mass = torch.softmax(logits, dim=-1)[:, list(answers)].sum(-1)
    return torch.stack([p_yes, mass], dim=1).cpu().numpy()


def length_batches(lengths: list[int], batch_size: int, waste: float = 2.0) -> list[list[int]]:
    """Indices in batches of at most `batch_size`, shortest first, a batch cut early where padding to its
    longest would make it `waste` times its real tokens: one long prompt among short ones (a 1,700-token
    title in the MicroLens sample) is forwarded alone instead of padding 20 others to its length (that
    batch took 3.5 minutes)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        batch = batches[-1] if batches else None
        if (batch is None or len(batch) == batch_size
                or (len(batch) + 1) * lengths[i] > waste * (sum(lengths[j] for j in batch) + lengths[i])):
            batches.append([i])
        else:
            batch.append(i)
    return batches


def score_shared(loaded: LoadedModel, encoded: list[Encoded], answers: tuple[int, int],
                 batch_size: int = 21) -> np.ndarray:
    """(P(Yes), answer mass) of prompts that begin alike (one group of GROUP_COLUMNS), their common
    prefix encoded once (with its image, when `prefix_length` lets the prefix run through it)."""
    model, device = loaded.model, loaded.device
    image_id = getattr(loaded.model.config, "image_token_id", None)
    n_prefix = prefix_length(encoded, image_id)
    image_in_prefix = image_id is not None and image_id in encoded[0].ids[:n_prefix]
    cache = None
    if n_prefix:
        prefix = torch.tensor([encoded[0].ids[:n_prefix]], device=device)
        vision = _vision_batch(encoded[:1], model.dtype, device) if image_in_prefix else {}
        cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1, **vision).cache  # logits unused
    scores = np.zeros((len(encoded), 2))
    for rows in length_batches([len(e.ids) - n_prefix for e in encoded], batch_size):
        batch = [encoded[i] for i in rows]
        ids, mask = _pad([e.ids[n_prefix:] for e in batch], loaded.tokenizer.pad_token_id, "right")
        kwargs = {} if image_in_prefix else _vision_batch(batch, model.dtype, device)
        if cache is not None:  # a fresh batch-sized copy: the forward appends the suffix to it
            kwargs["cache"] = DynamicCache([(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1))
                                            for k, v, *_ in cache], config=model.config)
            mask = torch.cat([torch.ones((len(batch), n_prefix), dtype=mask.dtype), mask], dim=1)
        scores[rows] = _p_yes(model, answers, ids.to(device), mask.to(device),
                              (mask.sum(1) - 1 - n_prefix).to(device), **kwargs)
    return scores


def score_naive(loaded: LoadedModel, encoded: list[Encoded], answers: tuple[int, int],
                batch_size: int = 1, padding_side: str = "right") -> np.ndarray:
    """(P(Yes), answer mass) of whole prompts, `batch_size` per forward padded on `padding_side` (the
    reference)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        ids, mask = _pad([e.ids for e in batch], loaded.tokenizer.pad_token_id, padding_side)
        kwargs = _vision_batch(batch, loaded.model.dtype, loaded.device)
        if padding_side == "left":  # real tokens keep positions 0..n-1
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(loaded.device)
            last = torch.full((len(batch),), ids.shape[1] - 1)
        else:
            last = mask.sum(1) - 1
        scores.append(_p_yes(loaded.model, answers, ids.to(loaded.device), mask.to(loaded.device),
                             last.to(loaded.device), **kwargs))
    return np.concatenate(scores)


def score_examples(loaded: LoadedModel, examples: pd.DataFrame, *, image_root: str | Path = ".",
                   batch_size: int = 21, method: str = "shared", padding_side: str = "right",
                   order: str = "user_first", progress: bool = True, desc: str = "scoring",
                   with_mass: bool = False) -> np.ndarray:
    """P(Yes) for each row of `recommender.examples` output (prompt, image_path relative to
    image_root), in row order; with_mass: shape (rows, 2), P(Yes) and the answer mass. `shared`
    groups prompts by GROUP_COLUMNS[order] (the order the prompts were built in)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if order not in GROUP_COLUMNS:
        raise ValueError(f"order={order!r}: expected one of {tuple(GROUP_COLUMNS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    answers, root = answer_ids(loaded), Path(image_root)
    scores = np.full((len(examples), 2), np.nan)
    positions = np.arange(len(examples))
    groups = (examples.groupby(GROUP_COLUMNS[order], sort=False).indices.values() if method == "shared"
              else np.array_split(positions, max(1, -(-len(examples) // batch_size))))
    rank, size = launch.world()
    groups = list(groups)[rank::size]  # of N processes (msr_utils.launch), every N-th group: gathered below
    bar = tqdm(total=sum(map(len, groups)), desc=desc, unit="cand", disable=not progress)
    with torch.inference_mode(), fp32_head(loaded.model):
        for rows in groups:
            part, images = examples.iloc[rows], {}  # one group's images, processed once each
            encoded = [encode(loaded, p, None if pd.isna(i) else root / i, images)
                       for p, i in zip(part[recommender.PROMPT], part[IMAGE_PATH])]
            scores[rows] = (score_shared(loaded, encoded, answers, batch_size) if method == "shared"
                            else score_naive(loaded, encoded, answers, batch_size, padding_side))
            bar.update(len(rows))
    bar.close()
    if size > 1:
        mine = np.concatenate(groups) if groups else np.zeros(0, int)
        for rows, part in launch.gather((mine, scores[mine])):
            scores[rows] = part
    return scores if with_mass else scores[:, 0]
