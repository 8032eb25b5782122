"""Stage 04: LoRA / QLoRA supervised fine-tuning of the recommender (user preference + candidate
[+ image] -> "Yes" / "No").

Examples come from `recommender.examples`, the prompt builder stage 05 scores with, so training and
scoring see the same text. Labels are -100 everywhere except the answer tokens and the end token the
chat template puts after them (the token-level prefix check fails loudly if the template breaks it).
Train: every train row's target + its negative (1:1). Valid: each row's target + one of its negatives
drawn with base.seed, so the eval loss has the training class balance; these pairs are also scored
with stage 05's P(Yes) scorer before training (the base model) and after (the adapter), the view of
whether fine-tuning learned anything. The eval loss is computed at most `sft.eval_points` times, on a
seeded sample of `sft.eval_examples` of them, so its cost does not grow with the data. Ranking over all 20 negatives is stage 05's job.

LoRA on every linear layer of the language model (never the vision tower nor the projector); 4-bit
NF4 QLoRA when the profile asks for it (needs CUDA, `models.load` refuses otherwise); fp32 LoRA on
CPU. Checkpoints go to data/checkpoints/<dataset> (not a DVC output): a rerun with the same
settings and data resumes from the last one; anything else starts over. Only the adapter and the
processor are kept, in data/adapters/<dataset>.

N processes (base.processes, msr_utils.launch): DDP under accelerate (gloo on CPUs, nccl on GPUs).
One optimizer step's global batch stays sft.batch_size x sft.grad_accum examples (`per_process`), so
N changes the speed, not the run; the eval loss is gathered over every valid example once.

CLI (also under `accelerate launch -m msr_utils.sft ...` for DDP):
    python -m msr_utils.sft --dataset microlens50k [--set sft.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from PIL import Image
from tqdm.auto import tqdm
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from msr_utils import config, evaluate, launch, models, prompts, recommender, summarize
from msr_utils.config import DATASETS, ConfigError, Params, load_params
from msr_utils.data.schema import CANDIDATES, IMAGE_PATH, ITEM, TARGET_POS, USER
from msr_utils.paths import STAGE_01, STAGE_02, STAGE_03, artifacts, require
from msr_utils.rows import first

TEXT, ANSWER, N_ANSWER, LENGTH = "text", "answer", "n_answer", "length"
IGNORE = -100  # label of tokens the loss skips
RUN_STAMP = "run.json"  # in the checkpoint folder: what the checkpoints were trained on
CURVE_COLUMNS = ["step", "train_loss", "eval_loss"]


def paths(params: Params, dataset: str) -> dict[str, Path]:
    a = artifacts(params, dataset)
    return {
        **a,
        "metrics": a["results"] / "sft.json",
        "curve": a["results"] / "sft_curve.csv",
        "plot": a["results"] / "sft_curve.png",
        "valid_plot": a["results"] / "sft_valid_scores.png",
    }


# --- examples -------------------------------------------------------------------------------------

def pick_rows(rows: pd.DataFrame, split: str, limit: int, seed: int) -> pd.DataFrame:
    """Train: the first `limit` rows (0 = all). Valid: each row's target + one seeded negative."""
    if split == "train":
        return first(rows, limit)
    rng = np.random.default_rng(seed)
    pairs = [[c[0], c[1 + rng.integers(len(c) - 1)]] if len(c) > 1 else list(c) for c in rows[CANDIDATES]]
    return rows.assign(**{CANDIDATES: pairs})


def readable_images(items: pd.DataFrame, root: Path, wanted: set[str]) -> tuple[pd.DataFrame, dict, int]:
    """items with image_path set to None where the file cannot be read (among `wanted` items),
    {item_id: (width, height)} of the readable ones, and how many could not be read."""
    items = items.copy()
    sizes, broken = {}, []
    todo = items[items[ITEM].isin(wanted) & items[IMAGE_PATH].notna()]
    for item, rel in tqdm(zip(todo[ITEM], todo[IMAGE_PATH]), total=len(todo), desc="check images",
                          mininterval=2):
        image = summarize.load_image(root / rel)
        if image is None:
            broken.append(item)
        else:
            sizes[item] = image.size
    items.loc[items[ITEM].isin(broken), IMAGE_PATH] = None
    return items, sizes, len(broken)


def answer_suffixes(processor) -> dict[str, str]:
    """{"Yes": text, "No": text}: what the chat template appends to a prompt for each answer (the
    answer plus its end token). Checked to continue the prompt exactly. Whitespace the template writes
    after the end token (llava-hf's '</s> ') is left out: nothing is generated after the end token,
    so it is not trained on."""
    messages = prompts.user_message("Will the user like it?")
    prompt = recommender.chat_text(processor, messages)
    suffixes = {}
    for answer in prompts.ANSWERS:
        full = recommender.chat_text(processor, messages, answer)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently once an answer follows; "
                             "cannot train on prompt + answer")
        suffixes[answer] = full[len(prompt):].rstrip()
    return suffixes


def add_special(tokenizer, text: str) -> bool:
    """Whether the tokenizer should add BOS: not when the chat template already wrote it."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


def image_token_counts(processor, sizes: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Tokens one image of each (width, height) expands to (the processor's own count)."""
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    counts = {}
    for size in sizes:
        enc = processor(text=[processor.image_token], images=[Image.new("RGB", size)],
                        add_special_tokens=False)
        counts[size] = int(np.sum(np.asarray(enc["input_ids"][0]) == image_id))
    return counts


def build_examples(params: Params, dataset: str, loaded: models.LoadedModel, split: str,
                   tables: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per (split row, candidate): recommender.EXAMPLE_COLUMNS + answer, text (prompt +
    answer + end token), n_answer (tokens trained on, at the end), length (tokens after image
    expansion). Rows longer than sft.max_length are dropped and counted."""
    cfg, p = params.sft, paths(params, dataset)
    tables = tables or load_tables(params, dataset)
    processor, tokenizer = loaded.processor, loaded.tokenizer
    rows = pick_rows(tables[split], split, cfg.limit, params.base.seed)
    prefs = tables["preferences"]
    have = pd.MultiIndex.from_frame(prefs.loc[prefs[recommender.SPLIT] == split, [USER, TARGET_POS]])
    known = pd.MultiIndex.from_frame(rows[[USER, TARGET_POS]]).isin(have)
    stats = {"rows": int(known.sum()), "rows_without_preference": int((~known).sum())}
    if not known.any():
        raise ValueError(f"{p['preferences']}: no user preference for any of the {len(rows)} {split} rows; "
                         "run stage 03 (user summaries) for this split")
    rows = rows[known]

    with_image = cfg.candidate_image and loaded.kind == "vlm"
    wanted = set(rows[CANDIDATES].explode())
    items, sizes, broken = (readable_images(tables["items"], params.root, wanted) if with_image
                            else (tables["items"], {}, 0))
    ex = recommender.examples(rows, prefs, items, tables["item_summaries"], processor, kind=tables["noun"],
                              split=split, with_image=with_image,
                              placeholder_images=params.item_summary.placeholder_images,
                              order=params.recommender.order)
    ex[ANSWER] = np.where(ex[recommender.LABEL] == 1, prompts.ANSWERS[0], prompts.ANSWERS[1])
    suffix = answer_suffixes(processor)
    ex[TEXT] = ex[recommender.PROMPT] + ex[ANSWER].map(suffix)

    # Token-level check: the prompt's ids are a prefix of the full ids, the first answer token is the
    # one scoring reads (recommender.answer_token_ids).
    special = add_special(tokenizer, ex[TEXT].iloc[0]) if len(ex) else False
    prompt_ids = tokenizer(ex[recommender.PROMPT].tolist(), add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(ex[TEXT].tolist(), add_special_tokens=special)["input_ids"]
    first = recommender.answer_token_ids(processor, tokenizer)
    for n, (a, b, answer) in enumerate(zip(prompt_ids, full_ids, ex[ANSWER])):
        if b[:len(a)] != a or len(b) == len(a) or b[len(a)] != first[answer]:
            raise ValueError(f"{split} example {n}: the prompt's tokens are not followed by the {answer!r} "
                             f"token {first[answer]} in the answered conversation; labels would be wrong")
    ex[N_ANSWER] = [len(b) - len(a) for a, b in zip(prompt_ids, full_ids)]

    length = np.array([len(b) for b in full_ids])
    if with_image:
        image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
        counts = image_token_counts(processor, set(sizes.values()))
        markers = np.array([b.count(image_id) for b in full_ids])
        expanded = [counts[sizes[item]] if isinstance(path, str) else 0
                    for item, path in zip(ex[ITEM], ex[IMAGE_PATH])]
        length = length - markers + np.array(expanded, dtype=int)
    ex[LENGTH] = length
    too_long = ex[LENGTH] > cfg.max_length
    stats |= {"examples": int((~too_long).sum()),
              "positives": int(ex.loc[~too_long, recommender.LABEL].sum()),
              "with_image": int(ex.loc[~too_long, IMAGE_PATH].notna().sum()),
              "text_only": int(ex.loc[~too_long, IMAGE_PATH].isna().sum()),
              "unreadable_images": broken,
              "too_long": int(too_long.sum()), "max_tokens": int(ex[LENGTH].max())}
    if too_long.any():
        warnings.warn(f"{int(too_long.sum())} of {len(ex)} {split} examples are longer than "
                      f"sft.max_length={cfg.max_length} tokens and were dropped", stacklevel=2)
    if too_long.all():
        raise ValueError(f"all {len(ex)} {split} examples are longer than sft.max_length={cfg.max_length} "
                         f"(shortest {int(ex[LENGTH].min())} tokens, images included): raise sft.max_length")
    return ex[~too_long].reset_index(drop=True), stats


def load_tables(params: Params, dataset: str) -> dict[str, Any]:
    """The inputs of the stage, each failing with the file and the stage that writes it."""
    p = paths(params, dataset)
    tables = {s: pd.read_parquet(require(p[s], STAGE_01)) for s in ("train", "valid", "items")}
    tables["noun"] = json.loads(p["info"].read_text())["noun"]
    tables["preferences"] = pd.read_parquet(require(p["preferences"], STAGE_03))
    use_summary = params.sft.candidate_summary and params.item_summary.enabled
    tables["item_summaries"] = pd.read_parquet(require(p["item_summaries"], STAGE_02)) if use_summary else None
    return tables


# --- batches --------------------------------------------------------------------------------------

@dataclass
class Collator:
    """Right-padded batch of finished conversations (+ images); labels keep only the last n_answer
    real tokens of each row (answer + end token). With `answer_logits` the batch also carries
    `logits_to_keep` and `shift_labels` (`answer_positions`): the output layer then runs only where a
    label is read."""
    processor: Any
    tokenizer: Any
    kind: str
    root: Path
    pixel_dtype: torch.dtype = torch.float32
    answer_logits: bool = True

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        texts = [b[TEXT] for b in batch]
        kwargs = dict(text=texts, padding=True, padding_side="right", return_tensors="pt",
                      add_special_tokens=add_special(self.tokenizer, texts[0]))
        if self.kind == "vlm":
            images = [summarize.load_image(self.root / b[IMAGE_PATH])
                      for b in batch if isinstance(b[IMAGE_PATH], str)]
            if any(im is None for im in images):
                raise RuntimeError("an image that was readable when the examples were built is not any more")
            enc = self.processor(images=images or None, **kwargs)
        else:
            enc = self.tokenizer(**kwargs)
        real = enc["attention_mask"].sum(1)
        expected = torch.tensor([b[LENGTH] for b in batch])
        if not torch.equal(real, expected):
            raise RuntimeError(f"batch lengths {real.tolist()} differ from the precomputed "
                               f"{expected.tolist()}")
        pos = torch.arange(enc["input_ids"].shape[1])
        start = real - torch.tensor([b[N_ANSWER] for b in batch])
        keep = (pos[None] >= start[:, None]) & (pos[None] < real[:, None])
        enc["labels"] = enc["input_ids"].masked_fill(~keep, IGNORE)
        if self.answer_logits:
            enc["logits_to_keep"], enc["shift_labels"] = answer_positions(enc["labels"])
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.pixel_dtype)
        return dict(enc)


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose logits predict a label (the label at t is read from the logits at t - 1),
    their union over the batch, and the labels they predict. Given to the model as `logits_to_keep` and
    `shift_labels`, the loss is the full one while the output layer, 49k wide for SmolLM2, runs on a few
    positions: 1.4x the training speed and 1.35 GB less at batch 8 x 260 tokens (measured, bf16)."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = (shifted != IGNORE).any(0).nonzero().squeeze(1)
    return keep, shifted[:, keep]


def token_table(collator: Collator, example: dict) -> pd.DataFrame:
    """One encoded example, a row per token: id, token, label, trained."""
    enc = collator([example])
    ids, labels = enc["input_ids"][0].tolist(), enc["labels"][0].tolist()
    return pd.DataFrame({"id": ids, "token": collator.tokenizer.convert_ids_to_tokens(ids),
                         "label": labels, "trained": [lab != IGNORE for lab in labels]})


def masked_text(table: pd.DataFrame, tokenizer, image_token: str | None = None) -> str:
    """The example as text: masked tokens plain, trained tokens inside ⟦ ⟧, image runs collapsed."""
    parts = []
    for trained, group in table.groupby((table["trained"] != table["trained"].shift()).cumsum()):
        text = tokenizer.decode(group["id"].tolist())
        parts.append(f"⟦{text}⟧" if group["trained"].iloc[0] else text)
    text = "".join(parts)
    if image_token:
        token = re.escape(image_token)
        text = re.sub(f"(?:{token}){{2,}}",
                      lambda m: f"{image_token}×{len(m.group()) // len(image_token)}", text)
    return text


# --- model ----------------------------------------------------------------------------------------

def lora_targets(model: torch.nn.Module) -> str:
    """Regex (peft full-match on module names) of every linear layer of the language model: under
    `language_model` for a VLM (the vision tower and the projector are left alone), every linear
    layer but the output head for a plain LM."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    lm = [n for n in names if ".language_model." in f".{n}"]
    if lm:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in lm})
        return rf"(.*\.)?language_model\..*\.({'|'.join(leaves)})"
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n.rsplit(".", 1)[-1] != "lm_head"})
    if not leaves:
        raise ValueError(f"{type(model).__name__}: no linear layers to put LoRA on")
    return rf".*\.({'|'.join(leaves)})"


def with_lora(loaded: models.LoadedModel, params: Params):
    """The loaded model wrapped with LoRA (after k-bit preparation when it is 4-bit)."""
    cfg, model = params.sft, loaded.model
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        init_lora_weights=True if cfg.lora_init == "default" else cfg.lora_init,
                        target_modules=lora_targets(model), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# --- training -------------------------------------------------------------------------------------

class TokenCount(TrainerCallback):
    """Tokens seen and wall time of this session (a resumed run starts counting at its checkpoint)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens, self.start = state.num_input_tokens_seen, time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.tokens = state.num_input_tokens_seen - self.tokens
        self.seconds = time.perf_counter() - self.start


class GlobalBatchTrainer(Trainer):
    """The HF Trainer with its length-grouped order cut for one optimizer step's global batch, not the
    per-process one: the megabatches of `group_by_length` scale with the batch (up to 50 of them), so
    only then do N processes train on the very batches of one process."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler.batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return sampler


def eval_steps(cfg, train_examples: int) -> int:
    """Steps between eval-loss evaluations: at most cfg.eval_points in the run, never more often
    than cfg.save_steps (a fixed step interval would make eval cost grow with the square of the data)."""
    batches = math.ceil(train_examples / cfg.batch_size)
    steps = math.ceil(math.ceil(batches / cfg.grad_accum) * cfg.epochs)
    return max(cfg.save_steps, math.ceil(steps / cfg.eval_points))


def per_process(cfg, world_size: int) -> tuple[int, int]:
    """(per-process batch, gradient accumulation) keeping one optimizer step's global batch,
    sft.batch_size x sft.grad_accum, on `world_size` processes: the batch split if it divides, else
    the accumulation."""
    if cfg.batch_size % world_size == 0:
        return cfg.batch_size // world_size, cfg.grad_accum
    if cfg.grad_accum % world_size == 0:
        return cfg.batch_size, cfg.grad_accum // world_size
    raise ConfigError(f"sft.batch_size = {cfg.batch_size} and sft.grad_accum = {cfg.grad_accum}: neither splits over "
                      f"{world_size} processes (base.processes), so the global batch would change; make one a "
                      f"multiple of {world_size}")


def eval_sample(valid: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The valid examples of a seeded sample of rows holding at most `n` examples (whole rows, so
    the class balance stays); all of them when n is 0 or covers them."""
    if not n or len(valid) <= n:
        return valid
    keys = valid[[USER, TARGET_POS]].drop_duplicates()
    sizes = valid.groupby([USER, TARGET_POS]).size().reindex(pd.MultiIndex.from_frame(keys)).to_numpy()
    order = np.random.default_rng(seed).permutation(len(keys))
    keep = keys.iloc[order[np.cumsum(sizes[order]) <= n]]
    return valid.merge(keep, on=[USER, TARGET_POS]).reset_index(drop=True)


def training_args(params: Params, folder: Path, progress: bool = True, train_examples: int = 0,
                  ) -> TrainingArguments:
    """Trainer settings from params.sft; bf16 (else fp16) autocast on CUDA, like models.load's dtype.
    eval_steps is sized on the processes TrainingArguments itself sees (`world_size`)."""
    cfg, on_cuda = params.sft, torch.cuda.is_available()
    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(folder), num_train_epochs=cfg.epochs, learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.keep_checkpoints or None,
        eval_strategy="steps", eval_steps=cfg.save_steps,  # sized below, once world_size is known
        train_sampling_strategy="group_by_length", length_column_name=LENGTH, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", bf16=bf16, fp16=on_cuda and not bf16,
        seed=params.base.seed, data_seed=params.base.seed, report_to="none", disable_tqdm=not progress,
        use_cpu=not on_cuda,
    )
    args.eval_steps = eval_steps(cfg, train_examples)
    args.per_device_train_batch_size, args.gradient_accumulation_steps = per_process(cfg, args.world_size)
    return args


def run_fingerprint(params: Params, model_ref: str, world_size: int, *frames: pd.DataFrame) -> str:
    """What a checkpoint depends on: sft params, model, seed, processes, the examples' text."""
    digest = hashlib.sha256(json.dumps(
        [params.sft.model_dump(), params.models_in_use.model_dump(), model_ref, params.base.seed, world_size],
        sort_keys=True, default=str).encode())
    for df in frames:
        digest.update(pd.util.hash_pandas_object(df[[TEXT, IMAGE_PATH]], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def resume_point(folder: Path, fingerprint: str) -> str | None:
    """The last checkpoint in `folder` when it was trained on the same fingerprint; otherwise the
    folder is emptied (its checkpoints belong to other settings or data) and None is returned."""
    stamp = folder / RUN_STAMP
    same = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    if folder.is_dir() and not same:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return get_last_checkpoint(str(folder))


def loss_curve(log_history: list[dict]) -> pd.DataFrame:
    """(step, train_loss, eval_loss) from Trainer.state.log_history, one row per logged step."""
    rows = [{"step": h["step"], "train_loss": h.get("loss"), "eval_loss": h.get("eval_loss")}
            for h in log_history if "loss" in h or "eval_loss" in h]
    if not rows:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.DataFrame(rows).groupby("step", as_index=False).last()[CURVE_COLUMNS]


def plot_curve(curve: pd.DataFrame, title: str = ""):
    """Train and eval loss against the optimizer step."""
    long = curve.melt("step", ["train_loss", "eval_loss"], var_name="loss", value_name="value").dropna()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(long, x="step", y="value", hue="loss", marker="o", ax=ax)
    ax.set(ylabel="cross-entropy on answer tokens", title=title)
    fig.tight_layout()
    return fig


def complete_pairs(valid: pd.DataFrame) -> pd.DataFrame:
    """The valid examples whose pair kept both sides (sft.max_length may drop one), in order."""
    complete = valid.groupby([USER, TARGET_POS])[recommender.LABEL].transform("nunique") == 2
    return valid[complete].reset_index(drop=True)


def valid_scores(params: Params, loaded: models.LoadedModel, model, valid: pd.DataFrame,
                 variant: str) -> tuple[pd.DataFrame, dict]:
    """P(Yes) of the valid pairs under `model` and their metrics (evaluate.score_variant, stage 05's
    scorer). Before training the LoRA model is the base model (B = 0): score it as zero_shot then,
    as fine_tuned after. Pairs that lost a side to sft.max_length are left out."""
    model.eval()
    return evaluate.score_variant(params, dataclasses.replace(loaded, model=model), complete_pairs(valid), variant,
                                  expect_size=2, progress=False)


def peak_memory_mb(on_cuda: bool) -> tuple[float, str]:
    if on_cuda:
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "process_max_rss"  # Linux: KiB


@dataclass
class SftResult:
    metrics: dict
    curve: pd.DataFrame
    example: pd.DataFrame  # token_table of the first training example
    example_text: str  # masked_text of it
    valid_scores: pd.DataFrame  # evaluate.SCORE_COLUMNS of the valid pairs, zero_shot and fine_tuned
    model: Any  # the trained PeftModel (None from launched processes: the adapter is on disk)
    trainer: Trainer | None

    def portable(self) -> "SftResult":
        """What crosses a process boundary (msr_utils.launch): all but the model and the Trainer."""
        return dataclasses.replace(self, model=None, trainer=None)


def run(params: Params, dataset: str, callbacks: list[TrainerCallback] | None = None,
        progress: bool = True) -> SftResult:
    """Fine-tune the profile's VLM on the dataset's train split; writes the adapter, the curve, the
    valid pairs' P(Yes) before and after, and sft.json (rank 0). Resumes from
    data/checkpoints/<dataset> when it holds a run of the same setup. With base.processes N > 1, DDP
    on N processes (msr_utils.launch; `callbacks` only in one process)."""
    if launch.wanted(params):
        if callbacks:
            raise ValueError("sft.run(callbacks=...) runs in this process only: set base.processes: 1")
        return launch.run(params, "sft", dataset)
    p, seed = paths(params, dataset), params.base.seed
    on_cuda = torch.cuda.is_available()
    if on_cuda:  # one GPU per process under `accelerate launch`
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    set_seed(seed)
    loaded = models.load_profile(params, "vlm")
    tables = load_tables(params, dataset)
    train, train_stats = build_examples(params, dataset, loaded, "train", tables)
    valid, valid_stats = build_examples(params, dataset, loaded, "valid", tables)

    quantized = getattr(loaded.model, "is_loaded_in_4bit", False)  # k-bit prep makes the vision tower fp32
    pixel_dtype = torch.float32 if quantized else loaded.model.dtype
    set_seed(seed)  # LoRA init does not depend on what ran before
    model = with_lora(loaded, params)
    trainable, total = model.get_nb_trainable_parameters()
    before, before_metrics = valid_scores(params, loaded, model, valid, evaluate.ZERO_SHOT)
    args = training_args(params, p["checkpoints"], progress, len(train))
    with args.main_process_first(local=False, desc="checkpoint folder"):
        fingerprint = run_fingerprint(params, loaded.model_ref, args.world_size, train, valid)
        resume = (resume_point(p["checkpoints"], fingerprint) if args.process_index == 0
                  else get_last_checkpoint(str(p["checkpoints"])))
    columns = [TEXT, IMAGE_PATH, N_ANSWER, LENGTH]
    collator = Collator(loaded.processor, loaded.tokenizer, loaded.kind, params.root, pixel_dtype)
    counter = TokenCount()
    trainer = GlobalBatchTrainer(model=model, args=args, data_collator=collator,
                                 train_dataset=Dataset.from_pandas(train[columns]),
                                 eval_dataset=Dataset.from_pandas(eval_sample(valid, params.sft.eval_examples, seed)[columns]),
                                 callbacks=[counter, *(callbacks or [])])
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no log dicts either; the curve has the losses
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train(resume_from_checkpoint=resume)
    curve = loss_curve(trainer.state.log_history)
    last = curve.iloc[-1] if len(curve) else None
    if last is None or last["step"] != trainer.state.global_step or pd.isna(last["eval_loss"]):
        trainer.evaluate()  # the last step was not an eval step
        curve = loss_curve(trainer.state.log_history)
    after, after_metrics = valid_scores(params, loaded, trainer.model, valid, evaluate.FINE_TUNED)
    logged = curve.dropna(subset=["train_loss"])
    train_losses = logged["train_loss"]
    memory, memory_kind = peak_memory_mb(on_cuda)
    metrics = {
        "steps": int(trainer.state.global_step), "epochs": float(params.sft.epochs),
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0,
        "train_loss_first": float(train_losses.iloc[0]) if len(train_losses) else None,
        "train_loss_last": float(train_losses.iloc[-1]) if len(train_losses) else None,
        "train_loss_last_steps": int(logged["step"].diff().iloc[-1]) if len(logged) > 1 else len(logged),
        "train_loss_mean": float(out.training_loss) if counter.tokens else None,  # this session's steps
        "eval_loss": float(curve["eval_loss"].iloc[-1]),
        "valid_auc_zero_shot": before_metrics["auc"], "valid_auc_fine_tuned": after_metrics["auc"],
        "valid_answer_mass_zero_shot": before_metrics["answer_mass"],
        "valid_answer_mass_fine_tuned": after_metrics["answer_mass"],
        "trainable_params": int(trainable), "total_params": int(total),
        "trainable_percent": round(100 * trainable / total, 4),
        "train_seconds": round(counter.seconds, 2),
        "tokens_per_s": round(counter.tokens / counter.seconds, 1) if counter.tokens else None,
        "peak_memory_mb": round(memory, 1), "peak_memory_kind": memory_kind,
        "world_size": args.world_size, "quantization": params.models_in_use.quantization,
        "model": loaded.model_ref,
        **{f"train_{k}": v for k, v in train_stats.items()},
        **{f"valid_{k}": v for k, v in valid_stats.items()},
    }
    example = token_table(collator, trainer.train_dataset[0])
    text = masked_text(example, loaded.tokenizer, getattr(loaded.processor, "image_token", None))
    scores = pd.concat([before, after], ignore_index=True)
    if trainer.is_world_process_zero():
        save_outputs(p, trainer, loaded, params, metrics, curve, scores, dataset)
    return SftResult(metrics, curve, example, text, scores, trainer.model, trainer)


def save_outputs(p: dict[str, Path], trainer: Trainer, loaded: models.LoadedModel, params: Params,
                 metrics: dict, curve: pd.DataFrame, scores: pd.DataFrame, dataset: str) -> None:
    """Adapter + processor + the settings they were trained with; curve csv/png; valid P(Yes) png;
    sft.json."""
    shutil.rmtree(p["adapter"], ignore_errors=True)
    trainer.model.save_pretrained(p["adapter"])
    loaded.processor.save_pretrained(p["adapter"])
    (p["adapter"] / "sft_params.json").write_text(json.dumps(
        {"base_model": loaded.model_ref, "seed": params.base.seed, "sft": params.sft.model_dump(),
         "item_summary_enabled": params.item_summary.enabled,
         "placeholder_images": params.item_summary.placeholder_images}, indent=2) + "\n")
    p["metrics"].parent.mkdir(parents=True, exist_ok=True)
    curve.to_csv(p["curve"], index=False)
    for fig, path in ((plot_curve(curve, f"{dataset}: LoRA fine-tuning"), p["plot"]),
                      (evaluate.plot_scores(scores), p["valid_plot"])):
        fig.savefig(path, dpi=120)
        plt.close(fig)
    p["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--params", default=None, help="params.yaml (default: found upwards from the cwd)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set sft.epochs=2 (repeatable)")
    args = parser.parse_args(argv)
    overrides = config.parse_sets(args.set)
    result = run(load_params(args.params, overrides), args.dataset)
    if result.trainer is None or result.trainer.is_world_process_zero():
        print(json.dumps(result.metrics, indent=2))


if __name__ == "__main__":
    main()
