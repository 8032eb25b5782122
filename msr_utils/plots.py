"""Figures the notebooks show: small functions, one figure each, returning the matplotlib figure."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image


def image_grid(paths: list[Path | None], captions: list[str], cols: int = 4, wrap: int = 40):
    """Images side by side with a wrapped caption under each (a grey box where there is no image)."""
    rows = max(1, -(-len(paths) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, paths, captions):
        ax.imshow(Image.open(path).convert("RGB") if path else Image.new("RGB", (32, 32), "lightgrey"))
        ax.set_title("\n".join(textwrap.wrap(caption, wrap)[:6]), fontsize=8, loc="left")
    fig.tight_layout()
    return fig
