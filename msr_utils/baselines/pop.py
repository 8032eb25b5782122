"""Pop: score = number of training users who interacted with the item (train rows' histories
and targets, each (user, item) once). Items unseen in training score 0 and tie; the metrics rank
ties pessimistically, so Pop gets no credit for guessing among them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from msr_utils.baselines.common import user_sequences
from msr_utils.data.schema import CANDIDATES


class Pop:
    name = "pop"

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> dict:
        self.counts = Counter(item for seq in user_sequences(train) for item in set(seq))
        return {"train_items": len(self.counts)}

    def score(self, rows: pd.DataFrame) -> list[np.ndarray]:
        return [np.array([self.counts.get(str(c), 0) for c in cands], dtype=float) for cands in rows[CANDIDATES]]
