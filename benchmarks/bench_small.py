"""The small profile's model (SmolLM2-135M-Instruct) per stage unit, bf16 vs fp32 in one run.

One unit per model stage, on the stage's own prompt builders and code: stage 03 one recurrent
user-summary call (a 3-title block of the sample, `--new-tokens` greedy tokens, batch `--batch`),
stage 04 one training example (a LoRA step as `sft.with_lora` places it: forward, backward, AdamW, on
`--batch` recommender prompts), stage 05 one scored candidate (`scoring.score_examples`, shared
user prefix, 21 candidates per row), zero-shot and fine-tuned (that LoRA as `evaluate.load_adapter`
loads it, in the model's dtype, and as peft loads it by default, in fp32). The fp32 weights are the GGUF's exact values; bf16 is the same
model cast. Prints seconds per unit for each dtype, the bf16 / fp32 speed ratio, and whether the
greedy summaries agree. bf16 pays only on CPUs with bf16 matmul instructions (AMX, AVX512-BF16).
Run: python benchmarks/bench_small.py [--rows 4] [--batch 8] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from peft import PeftModel
from transformers.utils import logging as hf_logging

from msr_utils import evaluate, models, prompts, recommender, scoring, sft, small, summarize
from msr_utils.config import load_params

ROOT = Path(__file__).resolve().parents[1]
TITLES = ROOT / "data/sample/microlens50k/MicroLens-50k_titles.csv"


def titles(n: int) -> list[str]:
    return pd.read_csv(TITLES, nrows=n)["title"].tolist()


def summary_prompts(loaded, n: int) -> list[str]:
    """n recurrent first-block prompts of 3 consecutive sample titles each."""
    t = titles(3 * n)
    return [summarize.render(loaded, prompts.user_message(prompts.user_block_prompt(
        prompts.user_items_text([(x, None) for x in t[3 * i:3 * i + 3]], "video"), None, "video")))
        for i in range(n)]


def candidate_examples(loaded, rows: int) -> pd.DataFrame:
    """`rows` users x 21 candidates: recommender.examples' columns, user_first prompts."""
    t, preference = titles(21 * rows), "The user appears to have a preference for funny videos and home cooking."
    out = []
    for r in range(rows):
        for j in range(21):
            text = recommender.chat_text(loaded.processor, prompts.recommendation_messages(
                preference, t[21 * r + j], kind="video"))
            out.append({"split": "test", "user_id": f"u{r}", "target_pos": 5, "item_id": f"i{21 * r + j}",
                        "label": int(j == 0), "prompt": text, "image_path": None})
    return pd.DataFrame(out)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def units(loaded, args, params) -> tuple[dict[str, float], list[str]]:
    """Seconds per unit of stages 03, 04 and 05, and the greedy summaries (stage 03)."""
    texts = summary_prompts(loaded, args.batch)
    gen = summarize.generation_kwargs(args.new_tokens)
    summarize.generate_batch(loaded, texts[:2], [None, None], summarize.generation_kwargs(4))  # warm-up
    answers = []
    s03 = timed(lambda: answers.extend(summarize.generate_batch(loaded, texts, [None] * len(texts), gen)))

    examples = candidate_examples(loaded, args.rows)
    s05 = timed(lambda: scoring.score_examples(loaded, examples, progress=False))

    lora = sft.with_lora(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), params)  # in place
    batch = loaded.tokenizer([p + "Yes<|im_end|>" for p in examples["prompt"].head(args.batch)],
                             return_tensors="pt", padding=True, padding_side="right")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, sft.IGNORE)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def step():
        lora.train()
        lora(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up (optimizer state)
    s04 = timed(step)
    with tempfile.TemporaryDirectory() as adapter:  # stage 05's fine_tuned: the adapter as evaluate loads it
        lora.save_pretrained(adapter)
        tuned = evaluate.load_adapter(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), Path(adapter))
        s05_tuned = timed(lambda: scoring.score_examples(tuned, examples, progress=False))
        default = PeftModel.from_pretrained(copy.deepcopy(loaded.model), adapter).eval()  # peft keeps LoRA in fp32
        s05_fp32_lora = timed(lambda: scoring.score_examples(dataclasses.replace(loaded, model=default), examples,
                                                             progress=False))
    per = {"stage 03: s per user-summary call": s03 / len(texts),
           "stage 04: s per training example": s04 / args.batch,
           "stage 05: s per scored candidate": s05 / len(examples),
           "stage 05: s per scored candidate, fine-tuned": s05_tuned / len(examples),
           "stage 05: the same, LoRA left in fp32 (peft's default)": s05_fp32_lora / len(examples)}
    return per, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4, help="stage 05: rows of 21 candidates")
    parser.add_argument("--batch", type=int, default=8, help="stage 03 calls per batch; stage 04 examples per step")
    parser.add_argument("--new-tokens", type=int, default=64, help="stage 03: new tokens per summary")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    params = load_params(ROOT / "params.yaml", {"base.profile": "small"})
    torch.set_num_threads(params.base.threads or torch.get_num_threads())

    with tempfile.TemporaryDirectory() as tmp:
        base = models.load(small.build(tmp, "fp32"), kind="lm")
        table, answers = {}, {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            loaded = dataclasses.replace(base, model=copy.deepcopy(base.model).to(dtype))
            table[name], answers[name] = units(loaded, args, params)
    out = pd.DataFrame(table)
    out["bf16 speed-up"] = out["fp32"] / out["bf16"]
    print(f"CPU bf16 flags: {sorted(small.cpu_flags() & set(small.FAST_BF16_FLAGS)) or 'none'}; "
          f"torch threads {torch.get_num_threads()}")
    print(out.to_string(float_format=lambda x: f"{x:.3f}"))
    same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
    print(f"\ngreedy summaries identical in bf16 and fp32: {same} of {len(answers['fp32'])}")


if __name__ == "__main__":
    main()
