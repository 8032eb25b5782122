"""Item-summary throughput on the tiny VLM: batched vs one-at-a-time, and a warm (all cached) rerun.

Targets: batched >= 3x the items/s of one-at-a-time; warm rerun < 5% of the cold batched run.
Run: HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/bench_item_summaries.py [--items 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from transformers.utils import logging as hf_logging

from msr_utils import models, summarize, tiny
from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TITLE

SIZES = [(32, 32), (64, 32), (48, 96), (120, 60)]


def make_items(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """n items with random RGB covers of a few sizes and short titles."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
        words = " ".join(rng.choice(["cat", "city", "music", "dance", "food", "travel"], 1 + i % 5))
        rows.append({ITEM: f"i{i}", TITLE: f"video {i}: {words}", IMAGE_PATH: f"{i}.jpg",
                     IMAGE_PLACEHOLDER: False})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        items = make_items(tmp / "images", args.items)
        loaded = models.load(tiny.build(tmp / "models")["vlm"], kind="vlm")
        run = dict(image_root=tmp / "images", max_new_tokens=args.max_new_tokens, progress=False)
        summarize.summarize_items(items.head(4), loaded, tmp / "warmup", batch_size=4, **run)

        rows = []
        for label, bs, cache in [("one-at-a-time (cold)", 1, "c1"),
                                 (f"batch {args.batch_size} (cold)", args.batch_size, "c16"),
                                 (f"batch {args.batch_size} (warm, cached)", args.batch_size, "c16")]:
            _, stats = summarize.summarize_items(items, loaded, tmp / cache, batch_size=bs, **run)
            rows.append({"run": label, "items": stats["items"], "generated": stats["generated"],
                         "seconds": stats["seconds"], "items/s": stats["items"] / stats["seconds"]})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    single, batched, warm = table["seconds"]
    print(f"\nbatched speed-up: {single / batched:.1f}x  (target >= 3x)")
    print(f"warm rerun: {100 * warm / batched:.1f}% of the cold batched run  (target < 5%)")


if __name__ == "__main__":
    main()
