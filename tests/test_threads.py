"""threads.pool: the one way stages 05 and 06 run independent jobs (in this process, or spawned ones)."""

import os

import pytest

from msr_utils import threads

SEEN: dict = {}


def _init(value):
    SEEN.update(value=value, pid=os.getpid())


def _read(_=None):
    return SEEN["value"], SEEN["pid"]


def test_one_process_runs_the_jobs_here_after_the_initializer():
    SEEN.clear()
    with threads.pool(1, _init, ("here",)) as jobs:
        assert isinstance(jobs, threads.Inline)
        assert jobs.submit(_read).result() == ("here", os.getpid())
        with pytest.raises(ZeroDivisionError):  # raised where the result is read, as from a process pool
            jobs.submit(divmod, 1, 0).result()


def test_n_processes_run_the_jobs_in_spawned_processes_each_initialised():
    SEEN.clear()
    with threads.pool(2, _init, ("there",)) as jobs:
        seen = [f.result() for f in [jobs.submit(_read, i) for i in range(6)]]
    assert {value for value, _ in seen} == {"there"} and os.getpid() not in {pid for _, pid in seen}
    assert SEEN == {}  # this process ran no initializer
