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


def metric_bars(table, metric: str = "auc", label: str = "variant"):
    """One horizontal bar per row of a comparison table, and a marker at the paper's number where its
    `paper_<metric>` column has one (a row with neither is left out)."""
    import seaborn as sns

    paper = f"paper_{metric}"
    shown = table.dropna(subset=[metric]) if paper not in table else table.dropna(subset=[metric, paper], how="all")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1))
    sns.barplot(shown, x=metric, y=label, hue="source", dodge=False, order=list(shown[label]), ax=ax)
    if paper in shown and shown[paper].notna().any():
        ax.scatter(shown[paper], range(len(shown)), marker="D", color="black", zorder=3, label="paper (reported)")
    ax.set(xlabel=f"{metric} (x 100)", ylabel="")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="source")
    fig.tight_layout()
    return fig


def metric_by_block_size(sweep, metric: str = "auc"):
    """A metric against the user-summary block size (one point per size; "all" = one block)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(sweep, x="order", y=metric, marker="o", ax=ax)
    ax.set_xticks(list(sweep["order"]), list(sweep["block_size"]))
    ax.set(xlabel="block size (items per user-summary block)", ylabel=f"{metric} (x 100)")
    fig.tight_layout()
    return fig
