"""Smoke test of benchmarks/bench_scale.py: two small points of stage 01, each in its own process;
records resume; growth is the largest point's seconds per unit over the smallest's."""

import importlib.util
import json
import re

import pandas as pd
import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_growth_compares_the_largest_point_with_the_smallest():
    table = pd.DataFrame({"users": [300, 0, 3000, 300, 0], "stage": ["sft", "sft", "sft", "data_prep", "data_prep"],
                          "s_per_unit": [1.0, 1.4, 9.0, 2.0, 1.0]})
    got = bench.growth(table).set_index("stage")["growth"]
    assert list(got.index) == ["data_prep", "sft"]  # pipeline order
    assert got["sft"] == pytest.approx(1.4) and got["data_prep"] == pytest.approx(0.5)  # 0 = all users: largest


def test_two_points_measured_in_scratch_projects_and_resumed(tmp_path, capsys):
    args = ["--users", "20", "40", "--stages", "data_prep", "--scratch", str(tmp_path),
            "--set", "item_summary.max_new_tokens=4"]
    bench.main(args)
    out = re.sub(" +", " ", capsys.readouterr().out)  # table columns without their padding
    record = json.loads((tmp_path / "scale.json").read_text())
    assert set(record) == {"20/data_prep", "40/data_prep"}
    assert record["40/data_prep"]["units"] > record["20/data_prep"]["units"] > 0  # interactions of each cut
    assert all(r["peak_rss_mb"] > 100 and r["seconds"] > 0 for r in record.values())
    assert "| data_prep | interactions |" in out and out.count("== ") == 2 and "growth" in out
    params = (tmp_path / "users-40" / "params.yaml").read_text()
    assert "limit_users: 40" in params and "max_new_tokens: 4" in params
    assert (tmp_path / "users-40" / "data" / "processed" / "microlens50k" / "train.parquet").is_file()
    assert not (ROOT / "data" / "scale" / "users-40").exists()  # nothing written in the project

    bench.main(args)  # every stage has a record: nothing runs again
    assert "== " not in capsys.readouterr().out
