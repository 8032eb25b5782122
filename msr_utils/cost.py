"""What a run costs before it runs: the tokens each stage would process on a prepared dataset under
the paper's settings, counted with the twin tokenizers and image processing (the paper's real ones),
and the GPU hours at the tokens/s a user gives.

Exact where the text is known (templates, titles, image tokens per cover, block states, examples);
the generated texts do not exist yet, so item summaries and user preferences are stand-ins of an
assumed length (default: their caps, `max_new_tokens`, i.e. an upper bound) made of varied words.
Covers: each item's image file, or one assumed size for all (`cover=(1280, 720)`), since the shipped
sample has only placeholder cards.

Rates: the tokens/s a user gives, or those measured on one GPU (`--measured results/gpu/<file>.json` of
benchmarks/bench_paper_shape.py). Wall-clock hours on G GPUs (`--gpus 1,4,8`) are GPU hours / G: every
model stage splits its work evenly over processes (msr_utils.launch), an assumption the 1 vs 2 process
ratios in docs/measured.md put a number on.

CLI: python -m msr_utils.cost --dataset microlens50k --tokens-per-s 2500 [--cover 1280x720] [--set k=v]
     python -m msr_utils.cost --dataset microlens50k --measured results/gpu/h200_paper_shape.json --gpus 1,4,8
"""

from __future__ import annotations

import argparse
import json
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from msr_utils import config, models, prompts, recommender, scoring, sft, summarize, users
from msr_utils.config import DATASETS, Params, load_params
from msr_utils.data.schema import CANDIDATES, IMAGE_PATH, ITEM, SPLITS, TARGET_POS, TITLE, USER
from msr_utils.paths import STAGE_01, artifacts, require

WORDS = ("bright colorful dark calm funny short detailed kitchen food chef car house tree phone book shoe bag red "
         "blue green yellow black white pink orange purple brown cooking travel music dance comedy animals news "
         "fashion beauty games sports cats dogs city night people smiling text large letters background").split()
CHUNK = 1024  # prompts tokenized at a time
KINDS = ("prompt", "generated", "trained")  # tokens read in a forward, written by generate, fed to training


@dataclass
class Assumptions:
    """Lengths of texts that do not exist before the run, and the cover size (None = the item's file)."""
    item_summary_tokens: int
    user_summary_tokens: int
    cover: tuple[int, int] | None = None


def stand_ins(tokenizer, count: int, n_tokens: int, seed: int = 0) -> list[str]:
    """`count` stand-ins for generated texts, each `n_tokens` tokens of the tokenizer that writes them
    (varied words, so no two prompts share one), the same for the same seed."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, n_tokens)) for _ in range(count)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [tokenizer.decode(i[:n_tokens]).strip() for i in ids]


def encode_counted(loaded: models.LoadedModel, prompts_: list[str], n_image: list[int],
                   images: list[str | None]) -> list[scoring.Encoded]:
    """Token ids as scoring.encode gives them, without image processing: the image marker expanded to
    `n_image` tokens (what the processor does), BOS added unless the chat template wrote it."""
    tok = loaded.tokenizer
    marker = getattr(loaded.processor, "image_token", None)
    image_id = tok.convert_tokens_to_ids(marker) if marker else None
    special = sft.add_special(tok, prompts_[0]) if prompts_ else False
    out = []
    for start in range(0, len(prompts_), CHUNK):  # ids kept as int32 arrays: ~9x less memory than lists of ints
        ids = tok(prompts_[start:start + CHUNK], add_special_tokens=special)["input_ids"]
        out += [scoring.Encoded(array("i", i if image is None else scoring.expand_image(i, image_id, n)), image=image)
                for i, n, image in zip(ids, n_image[start:start + CHUNK], images[start:start + CHUNK])]
    return out


def cover_tokens(loaded: models.LoadedModel, items: pd.DataFrame, root: Path, assume: Assumptions) -> pd.Series:
    """Image tokens of each item's cover (0 without an image), by item_id."""
    if assume.cover is not None:
        size = {i: assume.cover for i in items.loc[items[IMAGE_PATH].notna(), ITEM]}
    else:
        size = {}
        for item, rel in zip(items[ITEM], items[IMAGE_PATH]):
            if isinstance(rel, str):
                with Image.open(root / rel) as im:
                    size[item] = im.size
    counts = sft.image_token_counts(loaded.processor, set(size.values()))
    return pd.Series({i: counts[s] for i, s in size.items()}, dtype="int64").reindex(items[ITEM], fill_value=0)


# --- per stage ------------------------------------------------------------------------------------

def item_summary_tokens(params: Params, vlm: models.LoadedModel, items: pd.DataFrame, n_image: pd.Series,
                        kind: str, assume: Assumptions) -> dict:
    cfg = params.item_summary
    texts, counts, images = [], [], []
    for item, title in zip(items[ITEM], items[TITLE]):
        with_image = bool(n_image[item])
        template = prompts.item_summary_template(kind, with_image, cfg.prompt)
        texts.append(summarize.render(vlm, prompts.item_summary_messages(str(title), template, with_image)))
        counts.append(int(n_image[item]))
        images.append(item if with_image else None)
    encoded = encode_counted(vlm, texts, counts, images)
    return {"calls": len(encoded), "prompt": sum(len(e.ids) for e in encoded),
            "generated": len(encoded) * assume.item_summary_tokens}


def user_summary_tokens(params: Params, lm: models.LoadedModel, rows: pd.DataFrame, items: pd.DataFrame,
                        item_summaries: pd.DataFrame | None, kind: str, assume: Assumptions) -> dict:
    """Every distinct block state (users.plan) once, each previous preference a stand-in of the assumed
    length; calls = block states (what the cached, batched stage generates)."""
    cfg = params.user_summary
    texts = users.item_texts(items, item_summaries if params.item_summary.enabled else None)
    states, _ = users.plan(rows, texts, cfg, kind)
    previous = stand_ins(lm.tokenizer, 1, assume.user_summary_tokens, seed=1)[0]
    rendered = []
    for s in states.values():
        text = (prompts.user_direct_prompt(s.text, kind, cfg.prompt, s.user) if cfg.mode == "direct"
                else prompts.user_block_prompt(s.text, previous if s.prev else None, kind, cfg.prompt, s.user))
        rendered.append(summarize.render(lm, prompts.user_message(text)))
    encoded = encode_counted(lm, rendered, [0] * len(rendered), [None] * len(rendered))
    return {"calls": len(encoded), "prompt": sum(len(e.ids) for e in encoded),
            "generated": len(encoded) * assume.user_summary_tokens}


def recommender_prompts(params: Params, vlm: models.LoadedModel, lm: models.LoadedModel, split_rows: pd.DataFrame,
                        items: pd.DataFrame, item_summaries: pd.DataFrame | None, n_image: pd.Series, kind: str,
                        split: str, assume: Assumptions,
                        order: str | None = None) -> tuple[pd.DataFrame, list[scoring.Encoded]]:
    """recommender.examples for `split_rows` with stand-in preferences (one per row) and item summaries,
    and their encoded ids."""
    prefs = split_rows[[USER, TARGET_POS]].assign(**{recommender.SPLIT: split, recommender.PREFERENCE: stand_ins(
        lm.tokenizer, len(split_rows), assume.user_summary_tokens, seed=2)})
    use_summary = params.sft.candidate_summary and params.item_summary.enabled
    shown = items.assign(**{IMAGE_PATH: items[ITEM].where(items[ITEM].map(n_image) > 0)})  # item id as the image key
    ex = recommender.examples(split_rows, prefs, shown, item_summaries if use_summary else None, vlm.processor,
                              kind=kind, split=split, with_image=params.sft.candidate_image,
                              placeholder_images=True, order=order or params.recommender.order)
    n = [int(n_image[i]) if isinstance(p, str) else 0 for i, p in zip(ex[ITEM], ex[IMAGE_PATH])]
    images = [p if isinstance(p, str) else None for p in ex[IMAGE_PATH]]
    return ex, encode_counted(vlm, ex[recommender.PROMPT].tolist(), n, images)


def sft_tokens(params: Params, encoded: list[scoring.Encoded]) -> dict:
    per_epoch = sum(len(e.ids) + 2 for e in encoded)  # + the answer and the end token
    return {"examples": len(encoded), "per_epoch": per_epoch, "trained": int(per_epoch * params.sft.epochs)}


def eval_tokens(ex: pd.DataFrame, encoded: list[scoring.Encoded], image_id: int, order: str) -> dict:
    """Tokens forwarded to score every pair: one forward per candidate, and the shared method of
    `order` (its GROUP_COLUMNS)."""
    groups = ex.groupby(scoring.GROUP_COLUMNS[order], sort=False).indices.values()
    return {"naive": sum(len(e.ids) for e in encoded), "shared": scoring.forwarded_tokens(encoded, groups, image_id)}


# --- the report ------------------------------------------------------------------------------------

def report(params: Params, dataset: str, assume: Assumptions | None = None, twin_dir: str | Path = "data/models",
           progress: bool = True) -> pd.DataFrame:
    """One row per stage and quantity: tokens (and calls / examples) under the settings of `params`."""
    a = artifacts(params, dataset)
    info = json.loads(require(a["info"], STAGE_01).read_text())
    kind = info["noun"]
    assume = assume or Assumptions(params.item_summary.max_new_tokens, params.user_summary.max_new_tokens)
    folder = params.path(twin_dir)
    vlm = models.load(require(folder / "twin-vlm" / "config.json", "the models stage").parent, kind="vlm")
    lm = models.load(folder / "twin-lm", kind="lm")
    items = pd.read_parquet(a["items"])
    splits = {s: pd.read_parquet(a[s]) for s in SPLITS}
    image_id = vlm.tokenizer.convert_tokens_to_ids(vlm.processor.image_token)
    n_image = cover_tokens(vlm, items, params.root, assume)
    steps = tqdm(total=5, desc="counting tokens", disable=not progress)

    rows = []
    item = item_summary_tokens(params, vlm, items, n_image, kind, assume)
    rows += [("02 item summaries", "prompt", item["prompt"], item["calls"]),
             ("02 item summaries", "generated", item["generated"], item["calls"])]
    steps.update()
    summaries = pd.DataFrame({ITEM: items[ITEM], summarize.SUMMARY: stand_ins(
        vlm.tokenizer, len(items), assume.item_summary_tokens)})  # written by the VLM: its tokens
    prefixes = users.prefixes(splits, pd.read_parquet(a["interactions"]), str(a["interactions"]))
    user = user_summary_tokens(params, lm, prefixes, items, summaries, kind, assume)
    rows += [("03 user summaries", "prompt", user["prompt"], user["calls"]),
             ("03 user summaries", "generated", user["generated"], user["calls"])]
    steps.update()
    for split in ("train", "valid"):
        part = sft.pick_rows(splits[split], split, params.sft.limit, params.base.seed)
        _, enc = recommender_prompts(params, vlm, lm, part, items, summaries, n_image, kind, split, assume)
        t = sft_tokens(params, enc)
        if split == "train":  # calls = examples seen over all epochs
            rows.append(("04 fine-tuning", "trained", t["trained"], int(t["examples"] * params.sft.epochs)))
        else:
            rows.append(("04 fine-tuning (eval loss, per epoch)", "prompt", t["per_epoch"], t["examples"]))
        steps.update()
    test = splits["test"].head(params.eval.limit) if params.eval.limit else splits["test"]
    n_pairs = int(test[CANDIDATES].map(len).sum())
    for order in ("user_first", "image_first"):
        ex, enc = recommender_prompts(params, vlm, lm, test, items, summaries, n_image, kind, "test", assume, order)
        t = eval_tokens(ex, enc, image_id, order)
        label = f"05 scoring, {order} prompts"
        rows += [(f"{label}: one forward per candidate", "prompt", t["naive"], n_pairs),
                 (f"{label}: shared prefix", "prompt", t["shared"], n_pairs)]
    steps.update()
    steps.close()
    table = pd.DataFrame(rows, columns=["stage", "kind", "tokens", "calls or examples"])
    table["per call"] = (table["tokens"] / table["calls or examples"]).round(1)
    return table


def with_hours(table: pd.DataFrame, tokens_per_s: float, generated_per_s: float | None = None,
               trained_per_s: float | None = None, gpus: tuple[int, ...] = ()) -> pd.DataFrame:
    """GPU hours of each row at the given rates (tokens/s; generated and trained default to the same),
    and the wall-clock hours on each GPU count in `gpus` (the work split evenly)."""
    rate = {"prompt": tokens_per_s, "generated": generated_per_s or tokens_per_s, "trained": trained_per_s or tokens_per_s}
    hours = table["tokens"] / table["kind"].map(rate) / 3600
    return table.assign(**{"GPU hours": hours.round(2)}, **{f"wall h, {g} GPU{'s' * (g > 1)}": (hours / g).round(2)
                                                           for g in gpus})


def measured_rates(path: str | Path, precision: str = "4bit") -> dict[str, float]:
    """Per-GPU tokens/s of one run (`precision`) of a benchmarks/bench_paper_shape.py record: prompt
    tokens forwarded (whole prompts scored one by one), tokens generated, tokens trained."""
    record = json.loads(Path(path).read_text())
    runs = {r["precision"]: r for r in record["runs"]}
    if precision not in runs:
        raise ValueError(f"{path}: no run with precision {precision!r}; it has {sorted(runs)}")
    run = runs[precision]
    return {"tokens_per_s": run["scoring"]["naive_cand_per_s"] * run["scoring"]["prompt_tokens"],
            "generated_per_s": run["generation"]["generated_tokens_per_s"],
            "trained_per_s": run["training"]["tokens_per_s"], "gpu": record.get("gpu", "?")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--tokens-per-s", type=float, help="prompt tokens a GPU forwards per second")
    parser.add_argument("--measured", help="rates measured on one GPU instead: a results/gpu/*.json record")
    parser.add_argument("--precision", default="4bit", help="which run of --measured (4bit | bf16; default 4bit)")
    parser.add_argument("--gpus", default="1", help="GPU counts to give wall-clock hours for, e.g. 1,4,8")
    parser.add_argument("--generated-per-s", type=float, help="tokens generated per second (default: --tokens-per-s)")
    parser.add_argument("--trained-per-s", type=float, help="training tokens per second (default: --tokens-per-s)")
    parser.add_argument("--profile", default="paper", help="whose settings to count (default: the paper's)")
    parser.add_argument("--cover", default=None, help="assume every cover is WxH (e.g. 1280x720); default: the image files")
    parser.add_argument("--item-summary-tokens", type=int, help="assumed length (default: item_summary.max_new_tokens)")
    parser.add_argument("--user-summary-tokens", type=int, help="assumed length (default: user_summary.max_new_tokens)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    args = parser.parse_args(argv)
    overrides = {"base.profile": args.profile} | config.parse_sets(args.set)
    params = load_params(overrides=overrides)
    cover = tuple(int(x) for x in args.cover.lower().split("x")) if args.cover else None
    assume = Assumptions(args.item_summary_tokens or params.item_summary.max_new_tokens,
                         args.user_summary_tokens or params.user_summary.max_new_tokens, cover)
    if args.measured:
        rates = measured_rates(args.measured, args.precision)
        print(f"rates measured on one {rates.pop('gpu')} ({args.precision}, {args.measured}): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    elif args.tokens_per_s:
        rates = {"tokens_per_s": args.tokens_per_s, "generated_per_s": args.generated_per_s,
                 "trained_per_s": args.trained_per_s}
    else:
        parser.error("give --tokens-per-s or --measured")
    gpus = tuple(int(g) for g in args.gpus.split(","))
    table = with_hours(report(params, args.dataset, assume), **rates, gpus=gpus)
    print(f"{args.dataset}, profile {args.profile}: {len(pd.read_parquet(artifacts(params, args.dataset)['items']))} "
          f"items; assumed item summaries {assume.item_summary_tokens} and user summaries {assume.user_summary_tokens} "
          f"tokens; covers {args.cover or 'as in the image files'}")
    print(table.to_markdown(index=False))
    print(f"total GPU hours: {table['GPU hours'].sum():.1f}; wall-clock: "
          + ", ".join(f"{table[c].sum():.1f} h on {c.split(', ')[1]}" for c in table.columns if c.startswith("wall h")))


if __name__ == "__main__":
    main()
