"""Torch CPU threads per process: one knob, `base.threads`, for every stage (0 = torch's default).

The models here are small: more intra-op threads gain little, and on a busy 2-core machine two
threads made a GRU step ~200x and an item-summary batch ~15x slower than one. Where a stage uses
several cores it runs several single-threaded processes instead (`baselines.workers`, `eval.workers`),
all through `pool`."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager

import torch


def processes(requested: int, jobs: int) -> int:
    """Worker processes for `jobs` independent jobs: `requested`, 0 = one per CPU core this process
    may use; never more than the jobs, at least 1."""
    return max(1, min(jobs, requested or len(os.sched_getaffinity(0))))


def pool(n: int, initializer=None, initargs: tuple = ()) -> Executor:
    """Where independent jobs run: n spawned processes (a fresh interpreter each: safe with torch and
    CUDA), or, for n = 1, this process (`Inline`: nothing to start). The initializer runs once per
    process, this one included."""
    if n == 1:
        if initializer is not None:
            initializer(*initargs)
        return Inline()
    return ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=initializer, initargs=initargs)


class Inline(Executor):
    """An executor that runs each call at submit, in this process."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 (handed to whoever reads the future, as a pool would)
            future.set_exception(e)
        return future


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
