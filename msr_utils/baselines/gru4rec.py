"""GRU4Rec (Hidasi et al. 2016), small: item vectors -> GRU -> hidden state . item vectors.

`make(vocab, cfg)` learns an embedding per item id. `make(vocab, cfg, features)` is the
multimodal variant: the item vector is a learned linear map of a frozen feature vector (image
features, or sentence embeddings of item summaries or titles; see `features.py`), used both as the
GRU input and to score candidates, so items unseen in training still get meaningful scores.
Training and early stopping: `train.fit`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from msr_utils.baselines.common import Vocab
from msr_utils.baselines.train import FeatureItems, IdItems, NeuralBaseline, SequentialModel, TrainConfig


class GRU4Rec(SequentialModel):
    def __init__(self, items: nn.Module, dim: int, layers: int = 1, dropout: float = 0.2):
        super().__init__(items)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def encode(self, seqs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.drop(x))  # right padding: real positions never see the pads
        return out


def make(vocab: Vocab, cfg: TrainConfig, features: np.ndarray | None = None, name: str = "gru4rec") -> NeuralBaseline:
    """GRU4Rec over item ids, or over frozen `features` (one row per vocabulary item)."""
    def build() -> GRU4Rec:
        items = IdItems(len(vocab), cfg.dim) if features is None else FeatureItems(features, cfg.dim)
        return GRU4Rec(items, cfg.dim, cfg.layers, cfg.dropout)
    return NeuralBaseline(build, vocab, cfg, name)
