"""Where the pipeline's artifacts live for one dataset (DESIGN.md's data contract), in one place.
Each stage module adds its own outputs to these in its `paths()`."""

from __future__ import annotations

from pathlib import Path

from msr_utils.config import Params


def artifacts(params: Params, dataset: str) -> dict[str, Path]:
    processed = params.path(params.data.out_dir) / dataset
    summaries = params.path("data/summaries") / dataset
    return {
        "processed": processed,
        **{name: processed / f"{name}.parquet" for name in ("interactions", "items", "train", "valid", "test")},
        "info": processed / "dataset.json",
        "item_summaries": summaries / "item_summaries.parquet",
        "user_summaries": summaries / "user_summaries.parquet",
        "preferences": summaries / "user_preferences.parquet",
        "adapter": params.path("data/adapters") / dataset,
        "checkpoints": params.path("data/checkpoints") / dataset,
        "cache": params.path("data/cache") / dataset,
        "results": params.root / "results" / dataset,
    }
