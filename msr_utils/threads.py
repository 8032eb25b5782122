"""Torch CPU threads per process: one knob, `base.threads`, for every stage (0 = torch's default).

The models here are small: more intra-op threads gain little, and on a busy 2-core machine two
threads made a GRU step ~200x and an item-summary batch ~15x slower than one. Where a stage uses
several cores it runs several single-threaded processes instead (`baselines.workers`, `eval.workers`)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def processes(requested: int, jobs: int) -> int:
    """Worker processes for `jobs` independent jobs: `requested`, 0 = one per CPU core this process
    may use; never more than the jobs, at least 1."""
    return max(1, min(jobs, requested or len(os.sched_getaffinity(0))))


def set_torch_threads(n: int) -> None:
    """n intra-op threads for this process from now on (0: left as they are)."""
    if n:
        torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int):
    """n intra-op threads inside the block (0: unchanged); the previous number after it."""
    before = torch.get_num_threads()
    set_torch_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
