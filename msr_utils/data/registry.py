"""Facts about each supported dataset: where its files live and the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "microlens" | "amazon"
    noun: str  # what an item is, for prompts: "video" | "product"
    kcore_user: int  # the official code's thresholds
    kcore_item: int
    paper_n_items: int  # items per user kept by the official code's split
    category: str | None = None  # Amazon 2023 category
    has_sample: bool = False  # a real sample ships in data/sample/<name>


DATASETS = {
    "microlens50k": DatasetInfo("microlens50k", "microlens", "video", 7, 5, 6, has_sample=True),
    "amazon_baby": DatasetInfo("amazon_baby", "amazon", "product", 6, 5, 11, "Baby_Products"),
    "amazon_games": DatasetInfo("amazon_games", "amazon", "product", 6, 5, 11, "Video_Games"),
}


def get(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]
