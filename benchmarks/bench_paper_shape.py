"""The paper's recommender VLM at its real size, on a GPU: what it costs, measured (not estimated).

LLaVA-v1.6-Mistral-7B's shape (the checkpoint's config sizes: 7.57 B parameters) with random weights,
since none can be downloaded here, and everything else real: the twin's Mistral tokenizer, chat
template and LLaVA-1.6 image processing (`twin.build_vlm(shape="paper")`), loaded through
`models.load` (bf16, then 4-bit NF4), the pipeline's own prompt builders, scorer and generator, and the
paper profile's LoRA (`sft.with_lora`). One 1280x720 cover (1,948 image tokens). Per precision:

- weights: GPU memory after loading;
- scoring in the paper's order (`image_first`): one candidate item, 20 users' ~200-token preferences,
  its cover encoded once (`scoring.score_shared`), against one forward per candidate (`score_naive`);
- generation: item summaries, a batch of 16 covers x 200 new tokens (the paper's cap, forced);
- training: LoRA (r 16 / alpha 32, language-model projections, gradient checkpointing) steps on one
  recommender example answered "Yes": seconds per step, peak GPU memory.

Random weights make the numbers costs, not results. Writes JSON to --out (default: stdout only).

    python benchmarks/bench_paper_shape.py                       # CUDA: bf16 and 4bit, the paper's settings
    python benchmarks/bench_paper_shape.py --set sft.gradient_checkpointing=true
    python benchmarks/bench_paper_shape.py --shape twin --precision none   # any machine: the same steps, tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from msr_utils import config, models, prompts, recommender, scoring, sft, summarize, twin  # noqa: E402

KIND = "video"
TITLE = "Three-minute egg fried rice that tastes like a restaurant's"
PREFERENCE = ("The user keeps coming back to short cooking videos, street food from night markets and "
              "calm travel vlogs with warm colours. Recently they also watched quick home workouts and a "
              "few clips about cats reacting to music; they skip long tutorials and loud challenge videos. ") * 3
PRECISIONS = {"bf16": None, "4bit": "4bit", "none": None}  # none: the device's default dtype (CPU: fp32)


def cover(folder: Path, size=(1280, 720)) -> Path:
    """A 1280x720 test card (a gradient: the processor sees a real-size cover)."""
    w, h = size
    image = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    path = folder / "cover.jpg"
    image.save(path)
    return path


def synced(fn):
    """(fn(), seconds), the GPU's queued work included."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def peak_mb(reset: bool = False) -> float | None:
    if not torch.cuda.is_available():
        return None
    value = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(value)


def build(folder: Path, shape: str, seed: int) -> Path:
    """Write the VLM of `shape` (random weights; bf16 on a GPU, built there) as a model folder."""
    cuda = torch.cuda.is_available()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        with torch.device("cuda" if cuda else "cpu"):
            model, processor = twin.build_vlm(seed, shape)
    finally:
        torch.set_default_dtype(before)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return folder


def score(loaded: models.LoadedModel, image: Path, n: int = 20) -> dict:
    texts = [recommender.chat_text(loaded.processor, prompts.recommendation_messages(
        f"{PREFERENCE}(user {i})", TITLE, kind=KIND, image_token=loaded.processor.image_token, order="image_first"))
        for i in range(n)]
    images: dict = {}
    encoded = [scoring.encode(loaded, t, image, images) for t in texts]
    answers = scoring.answer_ids(loaded)
    naive_n = 4
    with torch.inference_mode():
        scoring.score_shared(loaded, encoded[:2], answers)  # warm-up
        shared, s_shared = synced(lambda: scoring.score_shared(loaded, encoded, answers, batch_size=21))
        naive, s_naive = synced(lambda: scoring.score_naive(loaded, encoded[:naive_n], answers, batch_size=1))
    return {"prompt_tokens": len(encoded[0].ids), "candidates": n,
            "shared_cand_per_s": round(n / s_shared, 1), "naive_cand_per_s": round(naive_n / s_naive, 2),
            "max_abs_diff": float(abs(shared[:naive_n, 0] - naive[:, 0]).max()), "peak_mb": peak_mb(reset=True)}


def generate(loaded: models.LoadedModel, image: Path, batch: int = 16, new: int = 200) -> dict:
    template = prompts.item_summary_template(KIND, True, wording="official")
    text = summarize.render(loaded, prompts.item_summary_messages(TITLE, template, True))
    picture = summarize.load_image(image)
    kwargs = summarize.generation_kwargs(new) | {"min_new_tokens": new}  # random weights: force the cap
    summarize.generate_batch(loaded, [text] * 2, [picture] * 2, kwargs | {"max_new_tokens": 2,
                                                                          "min_new_tokens": 2})  # warm-up
    _, seconds = synced(lambda: summarize.generate_batch(loaded, [text] * batch, [picture] * batch, kwargs))
    return {"batch": batch, "new_tokens": new, "seconds": round(seconds, 2),
            "generated_tokens_per_s": round(batch * new / seconds, 1), "peak_mb": peak_mb(reset=True)}


def train(loaded: models.LoadedModel, params: config.Params, image: Path, steps: int = 3) -> dict:
    model = sft.with_lora(loaded, params)
    if params.sft.gradient_checkpointing:  # what the Trainer switches on (k-bit preparation already did)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    messages = prompts.recommendation_messages(PREFERENCE, TITLE, kind=KIND, image_token=loaded.processor.image_token,
                                               order="image_first")
    text = recommender.chat_text(loaded.processor, messages, answer=prompts.ANSWERS[0])
    inputs = loaded.processor(text=[text], images=[summarize.load_image(image)], add_special_tokens=False,
                              return_tensors="pt").to(loaded.device)
    quantized = getattr(loaded.model, "is_loaded_in_4bit", False)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.float32 if quantized else loaded.model.dtype)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -3:] = inputs["input_ids"][:, -3:]  # the answer and the turn's end
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.sft.lr)
    cuda = loaded.device.type == "cuda"
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up (and the optimizer's state)
    losses, seconds = synced(lambda: [step() for _ in range(steps)])
    return {"tokens": int(inputs["input_ids"].shape[1]), "trainable_params": sum(p.numel() for p in trainable),
            "step_s": round(seconds / steps, 3), "tokens_per_s": round(steps * inputs["input_ids"].shape[1] / seconds),
            "loss": round(losses[-1], 3), "peak_mb": peak_mb(reset=True)}


def measure(folder: Path, precision: str, params: config.Params, image: Path) -> dict:
    (loaded, seconds) = synced(lambda: models.load(folder, kind="vlm", quantization=PRECISIONS[precision]))
    out = {"precision": precision, "device": str(loaded.device), "dtype": str(loaded.model.dtype),
           "load_s": round(seconds, 1), "params": sum(p.numel() for p in loaded.model.parameters()),
           "weights_mb": round(torch.cuda.memory_allocated() / 2**20) if torch.cuda.is_available() else None}
    peak_mb(reset=True)
    for name, fn in (("scoring", lambda: score(loaded, image)), ("generation", lambda: generate(loaded, image)),
                     ("training", lambda: train(loaded, params, image))):  # training last: it wraps the model
        out[name] = fn()
        print(json.dumps({precision: {name: out[name]}}), flush=True)
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=tuple(twin.VLM_SHAPES), default="paper")
    parser.add_argument("--precision", nargs="+", choices=tuple(PRECISIONS), default=["bf16", "4bit"])
    parser.add_argument("--folder", type=Path, help="where the model is written (default: a temp folder)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param of the paper profile (e.g. sft.gradient_checkpointing=true)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and (args.shape == "paper" or set(args.precision) - {"none"}):
        parser.error(f"--shape {args.shape} --precision {' '.join(args.precision)} needs CUDA (the paper shape "
                     "is 30 GB in fp32); on CPU: --shape twin --precision none")
    sets = config.parse_sets(args.set)
    params = config.load_params(ROOT / "params.yaml", {"base.profile": "paper"} | sets)  # the paper's LoRA and lr
    in_memory = Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 40e9  # room for 15 GB of bf16
    work = Path(tempfile.mkdtemp(dir="/dev/shm" if in_memory else None))
    try:
        folder = args.folder or work / "vlm"
        _, seconds = synced(lambda: build(folder, args.shape, params.base.seed))
        result = {"shape": args.shape, "build_s": round(seconds, 1), "sets": sets,
                  "gradient_checkpointing": params.sft.gradient_checkpointing,
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "runs": []}
        image = cover(work)
        for precision in args.precision:
            result["runs"].append(measure(folder, precision, params, image))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
