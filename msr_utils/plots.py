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


def _interval(table, metric: str):
    """(2, n) distances from each value to its `<metric>_lo` / `_hi` (0 where there is none), for errorbar."""
    import numpy as np

    if f"{metric}_lo" not in table:
        return None
    value = table[metric].to_numpy(float)
    lo, hi = (table[f"{metric}_{end}"].to_numpy(float) for end in ("lo", "hi"))
    return np.clip(np.nan_to_num(np.vstack([value - lo, hi - value])), 0, None)  # a percentile interval
    # may, rarely, end at the value itself


def metric_bars(table, metric: str = "auc", label: str = "variant"):
    """One horizontal bar per row of a comparison table with its 95% interval (`<metric>_lo` / `_hi`)
    as an error bar, and a marker at the paper's number where its `paper_<metric>` column has one (a
    row with neither is left out)."""
    import seaborn as sns

    paper = f"paper_{metric}"
    shown = table.dropna(subset=[metric]) if paper not in table else table.dropna(subset=[metric, paper], how="all")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1))
    sns.barplot(shown, x=metric, y=label, hue="source", dodge=False, order=list(shown[label]), ax=ax)
    if (err := _interval(shown, metric)) is not None:
        ax.errorbar(shown[metric], range(len(shown)), xerr=err, fmt="none", ecolor="black", capsize=3,
                    lw=1, label="95% interval")
    if paper in shown and shown[paper].notna().any():
        ax.scatter(shown[paper], range(len(shown)), marker="D", color="black", zorder=3, label="paper (reported)")
    ax.set(xlabel=f"{metric} (x 100)", ylabel="")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="source")
    fig.tight_layout()
    return fig


def metric_by_block_size(sweep, metric: str = "auc", paper=None):
    """A metric against the user-summary block size (one point per size; "all" = one block), with its
    95% interval as error bars where the sweep has `<metric>_lo` / `_hi`. With `paper`
    (reported.block_points: point, auc, kind), a second panel shows the paper's Figure 5 by position:
    its block sizes are not legible, so its x-axis has none."""
    import seaborn as sns

    both = paper is not None and len(paper) > 0
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(9 if both else 5, 3.5), squeeze=False, sharey=both)
    ax = axes[0, 0]
    sns.lineplot(sweep, x="order", y=metric, marker="o", ax=ax)
    if (err := _interval(sweep, metric)) is not None:
        ax.errorbar(sweep["order"], sweep[metric], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(list(sweep["order"]), list(sweep["block_size"]))
    ax.set(xlabel="block size (items per user-summary block)", ylabel=f"{metric} (x 100)", title="ours")
    if both:
        right = axes[0, 1]
        right.plot(paper["point"], paper["auc"], marker="D", color="grey", ls="--")
        right.set_xticks(list(paper["point"]), [f"{i}." for i in paper["point"]])
        right.set(xlabel="the paper's i-th block size (values not legible)", title="paper, Figure 5 (read off, ≈)")
    fig.tight_layout()
    return fig
