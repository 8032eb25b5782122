"""The one training loop of the neural sequential baselines (GRU4Rec, SASRec and the multimodal
GRU4Rec variants), and the item tables they read.

Objective: next-item prediction with a softmax over every item of items.parquet, at every
position of each training sequence (as SASRec, and GRU4Rec's session-parallel training). Above
`baselines.softmax_items` items, each step's softmax runs over the batch's targets plus that many
items drawn uniformly (sampled softmax): on all of MicroLens-50k (9,535 items) the full softmax was
85 % of an epoch, and its cost per training row grew with the catalogue. The
sequences are the train rows' (history, target) rebuilt per user (`common.user_sequences`), cut
from the end into windows of `max_len + 1` items that overlap by one, so each training transition
is predicted exactly once. Only train rows are used: valid/test histories are never trained on.

Item representations are tied: the same table embeds the input items and scores the outputs
(score = hidden state . item vector), so a feature-based table also scores items never seen in
training. Early stopping: after each epoch the valid rows are scored and `metrics.evaluate`
computed; the best epoch's weights (by `early_stop_metric`) are restored. Everything is seeded.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from msr_utils.baselines.common import Vocab, evaluate_rows, user_sequences
from msr_utils.config import Params
from msr_utils.data.schema import CANDIDATES, HISTORY
from msr_utils.threads import torch_threads


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    patience: int = 10
    early_stop_metric: str = "auc"
    dim: int = 64
    layers: int = 1
    heads: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_len: int = 20
    threads: int = 1  # torch intra-op threads while training/scoring (base.threads); 0 = torch's default
    softmax_items: int = 0  # sampled softmax over the targets + this many items (0 = over every item)
    seed: int = 2024
    ks: tuple[int, ...] = (1, 3, 5, 10)
    progress: bool = True  # the per-epoch bar (off in stage 06's worker processes)

    @classmethod
    def from_params(cls, params: Params, seed: int | None = None) -> "TrainConfig":
        """The baselines section; `seed` (default base.seed) seeds the weights and the batch order."""
        b = params.baselines
        return cls(epochs=b.epochs, patience=b.patience, early_stop_metric=b.early_stop_metric, dim=b.dim,
                   layers=b.layers, heads=b.heads, dropout=b.dropout, lr=b.lr, weight_decay=b.weight_decay,
                   batch_size=b.batch_size, max_len=b.max_len, threads=params.base.threads, softmax_items=b.softmax_items,
                   seed=params.base.seed if seed is None else seed,
                   ks=tuple(params.eval.ks))


class IdItems(nn.Module):
    """A learned embedding per item id (row 0 = padding, kept at zero)."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.emb.weight[0].zero_()

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Vectors of item indices (0 = padding: zeros)."""
        return self.emb(idx)


class FeatureItems(nn.Module):
    """Frozen per-item feature vectors (standardised per dimension) through a learned linear map.
    `features` has one row per vocabulary item, in vocabulary order."""

    def __init__(self, features: np.ndarray, dim: int):
        super().__init__()
        f = torch.as_tensor(np.asarray(features, dtype=np.float32))
        f = (f - f.mean(0)) / (f.std(0) + 1e-6)
        self.register_buffer("features", f)
        self.proj = nn.Linear(f.shape[1], dim)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Vectors of item indices (0 = padding: zeros); only these rows are projected."""
        return self.proj(self.features[(idx - 1).clamp(min=0)]) * (idx > 0).unsqueeze(-1)


class SequentialModel(nn.Module):
    """An item table + a causal sequence encoder; subclasses implement `encode`."""

    def __init__(self, items: nn.Module):
        super().__init__()
        self.items = items

    def encode(self, seqs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded item indices and their (B, L, d) vectors -> (B, L, d) causal states."""
        raise NotImplementedError

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded item indices -> (B, L, d) causal states."""
        return self.encode(seqs, self.items.rows(seqs))


def windows(sequences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each sequence from its end into pieces of <= max_len + 1 items overlapping by one."""
    out = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(seq[start:end])
            end = start + 1
    return out


def _pad(seqs: list[np.ndarray]) -> torch.Tensor:
    batch = np.zeros((len(seqs), max(1, max(map(len, seqs)))), dtype=np.int64)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    return torch.from_numpy(batch)


@torch.no_grad()
def score_rows(model: SequentialModel, rows: pd.DataFrame, vocab: Vocab, max_len: int,
               batch_size: int = 256) -> list[np.ndarray]:
    """Each row's candidate scores: last hidden state of its (truncated) history . item vector."""
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch_size):
        part = rows.iloc[start: start + batch_size]
        hist = [vocab.encode(list(h)[-max_len:], "history") for h in part[HISTORY]]
        cands = [vocab.encode(list(c), "candidates") for c in part[CANDIDATES]]
        lengths = torch.tensor([len(h) for h in hist])
        states = model(_pad(hist))
        last = states[torch.arange(len(hist)), (lengths - 1).clamp(min=0)]
        last = last * (lengths > 0).unsqueeze(1)  # no history: every candidate scores 0
        scores = (model.items.rows(_pad(cands)) * last.unsqueeze(1)).sum(-1)
        out.extend(scores[i, : len(ci)].numpy().astype(float) for i, ci in enumerate(cands))
    return out


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_valid: float
    train_windows: int
    history: list[dict] = field(default_factory=list)  # per epoch: loss, valid metric, seconds


def softmax_items(nxt: torch.Tensor, n_items: int, sample: int, gen: torch.Generator,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The items a step's softmax runs over and each target's position among them (pads: -1).
    Every item (1..n_items) when `sample` is 0 or covers the catalogue; else the batch's targets plus
    `sample` items drawn uniformly (sampled softmax: the step's cost stops growing with the catalogue)."""
    if not sample or sample >= n_items:
        return torch.arange(1, n_items + 1), nxt - 1  # pad (0) -> -1, ignored
    drawn = torch.randint(1, n_items + 1, (sample,), generator=gen)
    items = torch.unique(torch.cat([nxt[nxt > 0], drawn]))  # sorted
    return items, torch.where(nxt > 0, torch.searchsorted(items, nxt), -1)


def fit(model: SequentialModel, train: pd.DataFrame, valid: pd.DataFrame, vocab: Vocab, cfg: TrainConfig,
        desc: str = "train") -> FitResult:
    """Train with the next-item softmax loss (`softmax_items`); keep the weights of the best valid epoch."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = windows([vocab.encode(s, "train rows") for s in user_sequences(train)], cfg.max_len)
    if not data:
        raise ValueError("no training transitions: every training sequence has fewer than 2 items")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    best, best_state, best_epoch, history = -math.inf, None, 0, []
    metric, k = cfg.early_stop_metric, cfg.early_stop_metric.partition("@")[2]  # hr@K: K may not be in ks
    valid_ks = sorted(set(cfg.ks) | ({int(k)} if k else set()))
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, mininterval=1, leave=False, disable=not cfg.progress)
    for epoch in bar:
        start, total, n = time.perf_counter(), 0.0, 0
        model.train()
        for idx in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
            batch = _pad([data[i] for i in idx.tolist()])
            inputs, nxt = batch[:, :-1], batch[:, 1:]
            items, targets = softmax_items(nxt, len(vocab), cfg.softmax_items, gen)
            logits = model(inputs) @ model.items.rows(items).T
            loss = loss_fn(logits.flatten(0, 1), targets.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        value = evaluate_rows(valid, score_rows(model, valid, vocab, cfg.max_len), valid_ks)[metric]
        history.append({"epoch": epoch, "loss": total / n, f"valid_{metric}": value,
                        "seconds": time.perf_counter() - start})
        bar.set_postfix(refresh=False, loss=f"{total / n:.3f}", **{metric: f"{value:.3f}"})
        if value > best:
            best, best_epoch, best_state = value, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch, len(history), best, len(data), history)


class NeuralBaseline:
    """A sequential model behind the baseline interface: fit(train, valid), score(rows).
    `build` makes the model; it runs after seeding, so the initial weights are reproducible."""

    def __init__(self, build: Callable[[], SequentialModel], vocab: Vocab, cfg: TrainConfig, name: str = "model"):
        torch.manual_seed(cfg.seed)
        self.model, self.vocab, self.cfg, self.name = build(), vocab, cfg, name
        self.result: FitResult | None = None

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> dict:
        with torch_threads(self.cfg.threads):
            self.result = fit(self.model, train, valid, self.vocab, self.cfg, desc=self.name)
        r = self.result
        return {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "train_windows": r.train_windows,
                f"valid_{self.cfg.early_stop_metric}": r.best_valid}

    def score(self, rows: pd.DataFrame) -> list[np.ndarray]:
        with torch_threads(self.cfg.threads):
            return score_rows(self.model, rows, self.vocab, self.cfg.max_len)
