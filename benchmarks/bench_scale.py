"""Scale benchmark: stages 01-05 of the tiny profile and stage 06's baselines at 300, 3,000 and all
users of the shipped MicroLens-50k sample (paper protocol), each point in its own scratch project.

Each stage runs in its own process, through the stage code the notebooks call; per stage it prints
the units processed, seconds, seconds per unit and the peak RSS of the stage's processes together
(stage 06 trains in worker processes: their sum, sampled every 0.2 s), then how seconds per
unit grew from the first point to the last (the goal: at most 1.5x). Units: interactions kept
(data prep), items summarised, LLM calls (user summaries), training examples x epochs (SFT),
candidates scored, all variants (evaluation), train rows (baselines).

Caches and checkpoints live in the point's scratch project (a point starts cold). A measured stage
is recorded in <scratch>/scale.json and kept: a killed run resumes at the first stage without a
record (that stage resumes from its caches, so its time is only the rest; --fresh measures anew).

    python benchmarks/bench_scale.py [--users 300 3000 0] [--stages data_prep ...] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from msr_utils import config, evaluate, item_summaries, reported, scratch, sft, users  # noqa: E402
from msr_utils.baselines import run as baselines  # noqa: E402
from msr_utils.data import prepare  # noqa: E402

DATASET = "microlens50k"
STAGES = ["data_prep", "item_summaries", "user_summaries", "sft", "evaluation", "baselines"]
UNIT = {"data_prep": "interactions", "item_summaries": "items", "user_summaries": "LLM calls",
        "sft": "examples x epochs", "evaluation": "candidates", "baselines": "train rows"}
SHARED = ["data/models", str(reported.FILE)]  # read from the main project, with data.sample_dir


def run_stage(stage: str, params: config.Params) -> int:
    """Run one stage in this process; returns the units it processed."""
    if stage == "data_prep":
        return int(prepare.run(params, DATASET).metrics["interactions"])
    if stage == "item_summaries":
        return int(item_summaries.run(params, DATASET)[1]["generated"])
    if stage == "user_summaries":
        return int(users.run(params, DATASET)[2]["llm_calls"])
    if stage == "sft":
        m = sft.run(params, DATASET, progress=False).metrics
        return int(m["train_examples"] * m["epochs"])
    if stage == "evaluation":
        m = evaluate.run(params, DATASET)["metrics"]
        return int(sum(m[v]["n_rows"] for v in evaluate.variants(params)))
    if stage == "baselines":
        baselines.run(params, DATASET)
        return int(json.loads(baselines.paths(params, DATASET)["metrics"].read_text())["train_rows"])
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")


def project(main: config.Params, folder: Path, users_: int, sets: dict) -> Path:
    """The point's scratch project (params.yaml + links); built once, kept for resuming."""
    overrides = {"base.profile": "tiny", "base.datasets": [DATASET], "data.limit_users": users_} | sets
    scratch.params_at(main, folder, overrides)
    scratch.link(main, folder, [*SHARED, main.data.sample_dir])
    if not (folder / "data/models/tiny-vlm").is_dir():  # a fresh clone: no models stage ran yet
        subprocess.run([sys.executable, "-m", "msr_utils.tiny", str(folder / "data/models"),
                        "--seed", str(main.base.seed)], check=True, cwd=ROOT)
    return folder


def measure(stage: str, folder: Path) -> dict:
    """Run `stage` of the project at `folder` in a child process: units, seconds, peak RSS (the child
    and its workers together)."""
    start, stop, peak = time.perf_counter(), threading.Event(), [0]
    child = subprocess.Popen([sys.executable, __file__, "--child", stage, "--root", str(folder)], cwd=folder)
    watcher = threading.Thread(target=tree_rss, args=(child.pid, stop, peak))
    watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed in {folder} (exit {os.waitstatus_to_exitcode(status)})")
    units = json.loads((folder / "bench" / f"{stage}.json").read_text())["units"]
    rss = max(usage.ru_maxrss * 1024, peak[0])  # wait4: the largest single process; the sampled sum may miss a spike
    return {"stage": stage, "unit": UNIT[stage], "units": units, "seconds": round(seconds, 1),
            "s_per_unit": seconds / units if units else float("nan"), "peak_rss_mb": round(rss / 2**20)}


def tree_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """peak[0] = the largest sum of the RSS of `pid` and its descendants, sampled every 0.2 s."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.wait(0.2):
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:  # ended between the listing and the reading
                pass
        peak[0] = max(peak[0], total)


def growth(table: pd.DataFrame) -> pd.DataFrame:
    """Per stage: seconds per unit at the largest point over the smallest (goal <= 1.5)."""
    wide = table.pivot(index="stage", columns="users", values="s_per_unit")
    cols = sorted(wide.columns, key=lambda u: u or 10**9)  # 0 = all users: the largest point
    return (wide[cols[-1]] / wide[cols[0]]).rename("growth").reindex(
        [s for s in STAGES if s in wide.index]).reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[300, 3000, 0], help="points (0 = all users)")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--scratch", type=Path, default=ROOT / "data" / "scale", help="scratch projects")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    parser.add_argument("--fresh", action="store_true", help="forget earlier records and caches")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one stage, in its own process
        with warnings.catch_warnings():  # the point's data.limit_users wins over the profile on purpose
            warnings.simplefilter("ignore", config.ProfileShadowWarning)
            params = config.load_params(args.root / "params.yaml")
        units = run_stage(args.child, params)
        (args.root / "bench").mkdir(exist_ok=True)
        (args.root / "bench" / f"{args.child}.json").write_text(json.dumps({"units": units}) + "\n")
        return

    main_params, sets = config.load_params(ROOT / "params.yaml"), config.parse_sets(args.set)
    if args.fresh:
        shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True, exist_ok=True)
    record = args.scratch / "scale.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    for users_ in args.users:
        folder = project(main_params, args.scratch / f"users-{users_ or 'all'}", users_, sets)
        for stage in args.stages:
            key = f"{users_}/{stage}"
            if key not in done:
                print(f"== {users_ or 'all'} users: {stage}", flush=True)
                measured = {"users": users_, **measure(stage, folder)}
                done = (json.loads(record.read_text()) if record.is_file() else {}) | {key: measured}
                record.write_text(json.dumps(done, indent=2) + "\n")  # re-read: another run may have added records
    rows = [done[f"{u}/{s}"] for u in args.users for s in args.stages]
    table = pd.DataFrame(rows)[["users", "stage", "unit", "units", "seconds", "s_per_unit", "peak_rss_mb"]]
    totals = table.groupby("users", sort=False).agg(seconds=("seconds", "sum"), peak_rss_mb=("peak_rss_mb", "max"))
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print(totals.to_markdown(floatfmt=".4g"))
    if len(args.users) > 1:
        print(growth(table).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
