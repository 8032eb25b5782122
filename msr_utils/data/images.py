"""Item images. No real cover is reachable offline, so a missing image may be replaced by a
deterministic placeholder card (the title on a coloured card). Placeholders are marked
`image_placeholder = True` in the items table and counted: they are never real images."""

from __future__ import annotations

import hashlib
import shutil
from functools import cache
import textwrap
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from msr_utils.data.schema import IMAGE_PATH, IMAGE_PLACEHOLDER, ITEM, TITLE

SIZE = 128


@cache
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(11)


def placeholder(title: str, key: str) -> Image.Image:
    """A card with the title text; its colour derives from `key`, so it is reproducible."""
    r, g, b = hashlib.sha256(key.encode()).digest()[:3]
    img = Image.new("RGB", (SIZE, SIZE), (64 + r // 2, 64 + g // 2, 64 + b // 2))
    text = "\n".join(textwrap.wrap(title or "(no title)", width=20)[:8])
    ImageDraw.Draw(img).multiline_text((6, 6), text, fill=(255, 255, 255), font=_font())
    return img


def fill_placeholders(items: pd.DataFrame, out_dir: Path, root: Path) -> pd.DataFrame:
    """Give every item without an image a placeholder PNG in `out_dir` (path relative to `root`).
    `out_dir` belongs to this function: it is emptied first, so no stale card survives."""
    items = items.copy()
    missing = items[IMAGE_PATH].isna().to_numpy()
    items[IMAGE_PLACEHOLDER] = missing
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    paths = []
    for item, title in tqdm(items.loc[missing, [ITEM, TITLE]].itertuples(index=False),
                            total=int(missing.sum()), desc="placeholder images", mininterval=2):
        path = out_dir / f"{item}.png"
        placeholder(title, item).save(path, optimize=False)
        paths.append(str(path.resolve().relative_to(root.resolve())))
    items.loc[missing, IMAGE_PATH] = paths
    return items
