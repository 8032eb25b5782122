"""Canonical column names and table checks shared by every loader and stage."""

from __future__ import annotations

import pandas as pd

USER, ITEM, TIME, RATING = "user_id", "item_id", "timestamp", "rating"
TITLE, DESCRIPTION = "title", "description"
IMAGE_PATH, IMAGE_URL, IMAGE_PLACEHOLDER = "image_path", "image_url", "image_placeholder"
HISTORY, TARGET, TARGET_POS, CANDIDATES = "history", "target", "target_pos", "candidates"

INTERACTION_COLUMNS = {USER: "str", ITEM: "str", TIME: "int64", RATING: "float64"}
ITEM_COLUMNS = {TITLE: "str", DESCRIPTION: "str", IMAGE_PATH: "str", IMAGE_URL: "str"}
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data; the message names the file, line or field."""


def interactions_frame(users, items, timestamps, ratings=None) -> pd.DataFrame:
    """Build an interactions table with the canonical dtypes."""
    df = pd.DataFrame({
        USER: pd.Series(users, dtype="str"),
        ITEM: pd.Series(items, dtype="str"),
        TIME: pd.Series(timestamps, dtype="int64"),
    })
    df[RATING] = pd.Series(ratings, dtype="float64") if ratings is not None else float("nan")
    return df


def check_columns(df: pd.DataFrame, required, source: str) -> None:
    """Fail naming the source and every missing column."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
