"""Stages 03, 04 and 05 on 1 and on 2 processes (base.processes, msr_utils.launch), in one run.

A scratch project (tiny profile, the first `--users` users of the shipped sample, stage 01 and 02 run
once) runs each stage cold with 1 process and with 2: stage 03 with an empty user-summary cache, stage
04 from no checkpoint, stage 05 on the adapter of the 1-process run (`eval.workers: 1`: its two variants one
after the other in either case). Seconds include what a user waits
for: with 2 processes the launch (accelerate, two interpreters importing torch, two model loads).
Prints per stage the units, seconds for 1 and 2 processes, the speed-up and whether the outputs agree
(stage 03, 05: the same bytes; 04: the largest relative loss difference).
Run: python benchmarks/bench_processes.py [--users 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from msr_utils import evaluate, item_summaries, sft, tiny, users
from msr_utils.config import load_params
from msr_utils.data import prepare

ROOT = Path(__file__).resolve().parents[1]
DATASET = "microlens50k"


def project(root: Path, n_users: int) -> Path:
    """A scratch project: params.yaml with n_users, the sample linked, tiny models, stages 01 and 02."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "sample").symlink_to(ROOT / "data" / "sample")
    shutil.copy(ROOT / "data" / "paper_reported.csv", root / "data")
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["data"]["limit_users"] = n_users
    tree["sft"]["lora_dropout"] = 0.0  # 1 and 2 processes then differ by float rounding only
    tree["eval"]["workers"] = 1  # one process means one: not stage 05's two variants side by side
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    tiny.build(root / "data" / "models", seed=2024)
    params = load_params(root / "params.yaml")
    prepare.run(params, DATASET)
    item_summaries.run(params, DATASET)
    return root


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=300, help="users of the sample (default 300, the tiny profile's)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        root = project(Path(tmp) / "project", args.users)
        rows, outputs = [], {}
        for n in (1, 2):
            params = load_params(root / "params.yaml", {"base.processes": n})
            p = users.paths(params, DATASET)
            shutil.rmtree(p["cache"], ignore_errors=True)
            shutil.rmtree(sft.paths(params, DATASET)["checkpoints"], ignore_errors=True)
            (_, blocks, stats), s03 = timed(lambda: users.run(params, DATASET))
            trained, s04 = timed(lambda: sft.run(params, DATASET, progress=False))
            adapter = sft.paths(params, DATASET)["adapter"]
            if n == 1:
                shutil.copytree(adapter, Path(tmp) / "adapter-1")
            else:  # stage 05 scores the 1-process adapter: its scores then compare byte for byte
                shutil.rmtree(adapter)
                shutil.copytree(Path(tmp) / "adapter-1", adapter)
            scored, s05 = timed(lambda: evaluate.run(params, DATASET))
            outputs[n] = {"blocks": blocks, "curve": trained.curve, "scores": scored["scores"]}
            rows.append({"processes": n, "03 user summaries (LLM calls)": (stats["llm_calls"], s03),
                         "04 fine-tuning (examples x epochs)": (trained.metrics["train_examples"] * params.sft.epochs, s04),
                         "05 evaluation (candidates)": (len(scored["scores"]), s05)})
        curves = outputs[1]["curve"].merge(outputs[2]["curve"], on="step").dropna()
        loss_diff = float(np.max(np.abs(curves["train_loss_x"] - curves["train_loss_y"]) / curves["train_loss_x"]))
        same = {"03": outputs[1]["blocks"].equals(outputs[2]["blocks"]),
                "05": outputs[1]["scores"].reset_index(drop=True).equals(outputs[2]["scores"].reset_index(drop=True))}
        table = []
        for stage in rows[0]:
            if stage == "processes":
                continue
            (units, one), (_, two) = rows[0][stage], rows[1][stage]
            agree = f"rel. loss diff {loss_diff:.1e}" if stage.startswith("04") else (
                "same bytes" if same[stage[:2]] else "DIFFER")
            table.append({"stage (unit)": stage, "units": units, "1 process s": round(one, 1),
                          "2 processes s": round(two, 1), "speed-up": round(one / two, 2), "outputs": agree})
        print(f"{args.users} users, tiny profile, 1 torch thread per process")
        print(pd.DataFrame(table).to_markdown(index=False))
        print(json.dumps(table))


if __name__ == "__main__":
    main()
