"""Where the pipeline's artifacts live for one dataset (DESIGN.md's data contract), in one place.
Each stage module adds its own outputs to these in its `paths()`."""

from __future__ import annotations

from pathlib import Path

from msr_utils.config import Params


STAGE_01, STAGE_02, STAGE_03 = "stage 01 (data prep)", "stage 02 (item summaries)", "stage 03 (user summaries)"


def require(path: Path, made_by: str, instead: str = "") -> Path:
    """`path`, or a FileNotFoundError naming it, the stage that writes it and `instead` (a way around)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run {made_by} first" + (f", or {instead}" if instead else ""))
    return path


def artifacts(params: Params, dataset: str) -> dict[str, Path]:
    processed = params.path(params.data.out_dir) / dataset
    summaries = params.path("data/summaries") / dataset
    results = params.root / "results" / dataset
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
        "results": results,
        # result tables: stage 05 writes results.*, stage 06 comparison.*; `make results` prints the .md
        "table_md": results / "results.md",
        "table_csv": results / "results.csv",
        "comparison_md": results / "comparison.md",
        "comparison_csv": results / "comparison.csv",
    }
