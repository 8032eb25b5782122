"""Tiny random-initialised checkpoints built offline, saved like hub models.

`build(out_dir, seed)` writes `out_dir/tiny-vlm` (LLaVA-NeXT class: Mistral text model + CLIP
vision tower, the paper's LLaVA-1.6 architecture) and `out_dir/tiny-lm` (Mistral causal LM), both
sharing one small byte-level BPE tokenizer. Every later stage loads them with `models.load(path)`
exactly as it would load a hub id. Same seed -> same bytes.

CLI (a DVC stage): python -m msr_utils.tiny OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

VLM_DIR, LM_DIR = "tiny-vlm", "tiny-lm"
BOS, EOS, PAD, IMAGE = "<s>", "</s>", "<pad>", "<image>"
INST_OPEN, INST_CLOSE = "[INST]", "[/INST]"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE, INST_OPEN, INST_CLOSE]
VOCAB_SIZE = 1024
IMAGE_SIZE, PATCH_SIZE = 32, 8
# Init std of the output head (transformers' default for every layer is 0.02). LoRA leaves the head
# frozen, and at 0.02 with hidden size 64 no logit can rise above ~1.3: no token's probability can
# pass ~0.004 and the answer loss cannot fall below ~5.6 however long it trains. At 0.2 the random
# logits span a few units, like a trained LM's, and fine-tuning can learn to answer Yes/No. Being a
# positive rescaling, it leaves greedy generations and zero-shot rankings as they were.
HEAD_STD = 0.2
GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]

# Mistral-style chat template (like llava-hf/llava-v1.6-mistral-7b-hf): content is a string or a
# list of {"type": "image"} / {"type": "text", "text": ...}; images are rendered first. The
# generation prompt is empty (the answer follows "[/INST]"), so add_generation_prompt is accepted
# and a prompt is always a prefix of the prompt + answer.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' or message['role'] == 'system' %}"
    "{{ '[INST] ' }}"
    "{% for part in parts %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ ' ' + part['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Prompt-like English: image/title descriptions, user preferences, Yes/No answers.
CORPUS = """\
Please describe this image, which is a cover of a video.
Provide a detailed description in one continuous paragraph, including content information and
visual features such as colors, objects, text, and any notable elements present in the image.
Please describe this image of a product. The title of the item is given below.
Describe the item from its title only. The title is: a red dress for summer.
The video is titled: funny cat plays with a ball. The cover shows a cat on a sofa.
The user watched videos about cooking, travel, music, games and sports.
Summarize the preferences of the user from the items they interacted with, in order.
Here is the summary of the user preference so far, followed by the next block of items.
Based on the user preference, will the user like the candidate item? Answer Yes or No.
Answer: Yes
Answer: No
Yes
No
Yes. No. Yes, No, yes, no.
The image shows a person, a dog, a car, a house, a tree, a phone, a book, a shoe and a bag.
Colors: red, blue, green, yellow, black, white, pink, orange, purple and brown.
The text in the image reads the title in large white letters on a dark background.
The product is a pair of running shoes with a white sole and a blue upper.
A beauty product: a bottle of skin cream with a simple white label.
A toy for children: colourful blocks, a small car and a plush bear.
The cover of the video shows a bright kitchen, a plate of food and a smiling chef.
History of the user: item 1, item 2, item 3, item 4, item 5, item 6, item 7, item 8, item 9, item 10.
Candidate item title: a short film about the city at night.
The user likes music videos, dance, comedy, animals, news, fashion and beauty.
"""


def train_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE on the embedded corpus; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating Yes/No makes each (with and without a leading space) a single token.
    tok.train_from_iterator([CORPUS] * 4 + [" Yes No"] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        additional_special_tokens=[INST_OPEN, INST_CLOSE],
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def text_config(tokenizer: PreTrainedTokenizerFast) -> MistralConfig:
    """Two-layer Mistral text model, hidden 64."""
    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_vlm(tokenizer: PreTrainedTokenizerFast, seed: int):
    """Tiny LLaVA-NeXT model + processor (CLIP vision: 2 layers, hidden 32, 32px, patch 8)."""
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    _scale_head(model)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )
    _set_generation_defaults(model, tokenizer)
    return model, processor


def build_lm(tokenizer: PreTrainedTokenizerFast, seed: int):
    """Tiny Mistral causal LM sharing the tokenizer."""
    torch.manual_seed(seed + 1)
    model = MistralForCausalLM(text_config(tokenizer)).eval()
    _scale_head(model)
    _set_generation_defaults(model, tokenizer)
    return model


def _scale_head(model) -> None:
    """Output head weights rescaled to std HEAD_STD (same random directions, deterministic)."""
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_STD / model.config.get_text_config().initializer_range)


def _set_generation_defaults(model, tokenizer) -> None:
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


def build(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write out_dir/tiny-vlm and out_dir/tiny-lm; return {"vlm": path, "lm": path}."""
    out = Path(out_dir)
    tokenizer = train_tokenizer()
    vlm, processor = build_vlm(tokenizer, seed)
    lm = build_lm(tokenizer, seed)
    paths = {"vlm": out / VLM_DIR, "lm": out / LM_DIR}
    vlm.save_pretrained(paths["vlm"])
    processor.save_pretrained(paths["vlm"])
    lm.save_pretrained(paths["lm"])
    tokenizer.save_pretrained(paths["lm"])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder that receives tiny-vlm/ and tiny-lm/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for kind, path in build(args.out_dir, args.seed).items():
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{kind}: {path} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
