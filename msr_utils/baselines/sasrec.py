"""SASRec (Kang & McAuley 2018), small: item embedding + learned positions -> causal pre-norm
Transformer blocks -> hidden state . item embedding (tied). Training: `train.fit`."""

from __future__ import annotations

import torch
from torch import nn

from msr_utils.baselines.common import Vocab
from msr_utils.baselines.train import IdItems, NeuralBaseline, SequentialModel, TrainConfig


class SASRec(SequentialModel):
    def __init__(self, items: nn.Module, dim: int, max_len: int, layers: int = 1, heads: int = 2,
                 dropout: float = 0.2):
        super().__init__(items)
        if dim % heads:
            raise ValueError(f"baselines.heads = {heads} must divide baselines.dim = {dim}")
        self.dim = dim
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def encode(self, seqs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = seqs.shape[1]
        x = self.drop(x * self.dim ** 0.5 + self.pos(torch.arange(n, device=seqs.device)))
        causal = nn.Transformer.generate_square_subsequent_mask(n, device=seqs.device)
        # right padding + causal mask: a real position only attends to real positions before it
        return self.norm(self.blocks(x, mask=causal, is_causal=True))


def make(vocab: Vocab, cfg: TrainConfig, name: str = "sasrec") -> NeuralBaseline:
    return NeuralBaseline(lambda: SASRec(IdItems(len(vocab), cfg.dim), cfg.dim, cfg.max_len, cfg.layers,
                                         cfg.heads, cfg.dropout), vocab, cfg, name)
