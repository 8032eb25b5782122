"""Data-prep benchmark: amazon.load_reviews (DuckDB) vs a gzip.open + json.loads loop.

Writes N reviews in the Amazon Reviews 2023 schema to a cached .jsonl.gz (deterministic; reused by reruns),
then runs each loader in fresh subprocesses (--repeat times) and reports the median seconds, rows/s,
the highest peak RSS and the speedup.
Targets: speedup >= 2.5x, loader peak RSS < 1 GB for 1M reviews.

    python benchmarks/bench_data_prep.py [--rows 1000000] [--repeat 3] [--cache-dir /tmp/msr_benchmarks]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

WORDS = ("baby soft warm bottle great love easy small size quality cheap broke after week daughter son "
         "recommend perfect fits car seat stroller blanket cute color wash dry game fun played hours graphics "
         "controller battery story boring price worth return gift").split()
ALNUM = string.ascii_uppercase + string.digits


def make_reviews(path: Path, rows: int, seed: int = 0) -> None:
    """Deterministic reviews with the published fields; skewed user and item popularity."""
    rng = random.Random(seed)
    users = ["A" + "".join(rng.choices(ALNUM, k=27)) for _ in range(max(1, rows // 6))]
    items = ["B0" + "".join(rng.choices(ALNUM, k=8)) for _ in range(max(1, rows // 20))]
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=6) as out:
        for _ in tqdm(range(rows), desc="writing reviews", unit="row", mininterval=2):
            parent = items[min(int(rng.paretovariate(1.2)) - 1, len(items) - 1) if rng.random() < 0.3
                           else rng.randrange(len(items))]
            url = "https://m.media-amazon.com/images/I/" + "".join(rng.choices(ALNUM, k=11))
            images = [{"small_image_url": url + "._SL256_.jpg", "medium_image_url": url + "._SL800_.jpg",
                       "large_image_url": url + "._SL1600_.jpg", "attachment_type": "IMAGE"}
                      ] if rng.random() < 0.05 else []
            review = {
                "rating": float(rng.choice((1, 2, 3, 4, 5, 5, 5, 4))),
                "title": " ".join(rng.choices(WORDS, k=rng.randint(1, 8))).capitalize(),
                "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 120))).capitalize() + ".",
                "images": images,
                "asin": parent if rng.random() < 0.8 else "B0" + "".join(rng.choices(ALNUM, k=8)),
                "parent_asin": parent,
                "user_id": rng.choice(users),
                "timestamp": rng.randint(1_104_537_600_000, 1_694_000_000_000),
                "helpful_vote": int(rng.expovariate(0.5)),
                "verified_purchase": rng.random() < 0.9,
            }
            out.write(json.dumps(review) + "\n")
    os.replace(tmp, path)


def python_loop(path: Path):
    """The plain way: decode and parse every line in Python, keep four columns."""
    from msr_utils.data import schema

    users, items, times, ratings = [], [], [], []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            review = json.loads(line)
            users.append(review["user_id"])
            items.append(review["parent_asin"])
            times.append(review["timestamp"] // 1000)
            ratings.append(review.get("rating"))
    return schema.interactions_frame(users, items, times, ratings)


def child(which: str, path: Path) -> None:
    """Run one loader; print seconds, rows, RSS before and peak (MB) and a digest of the frame as JSON."""
    import pandas as pd

    from msr_utils.data import amazon

    load = {"duckdb": amazon.load_reviews, "python": python_loop}[which]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    df = load(path)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = int(pd.util.hash_pandas_object(df, index=False).sum())
    print(json.dumps({"seconds": seconds, "rows": len(df), "base_mb": base, "peak_mb": peak, "digest": digest}))


def run(which: str, path: Path, repeat: int) -> dict:
    """Median seconds and highest peak RSS over `repeat` fresh subprocesses."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", which, str(path)],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    worst = max(runs, key=lambda r: r["peak_mb"])
    return {**worst, "seconds": statistics.median(r["seconds"] for r in runs),
            "all_seconds": [round(r["seconds"], 2) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "msr_benchmarks")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))

    path = args.cache_dir / f"reviews_{args.rows}.jsonl.gz"
    if not path.exists():
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        make_reviews(path, args.rows)
    print(f"{path} ({path.stat().st_size / 2**20:.0f} MB gz, {args.rows:,} reviews, {os.cpu_count()} cores)")
    results = {name: run(name, path, args.repeat) for name in ("duckdb", "python")}

    print(f"{'loader':<28}{'median s':>9}{'rows/s':>12}{'peak RSS MB':>13}{'+ over imports':>16}  runs (s)")
    labels = {"duckdb": "amazon.load_reviews (DuckDB)", "python": "gzip + json.loads loop"}
    for name, r in results.items():
        print(f"{labels[name]:<28}{r['seconds']:>9.2f}{r['rows'] / r['seconds']:>12,.0f}"
              f"{r['peak_mb']:>13.0f}{r['peak_mb'] - r['base_mb']:>16.0f}  {r['all_seconds']}")
    speedup = results["python"]["seconds"] / results["duckdb"]["seconds"]
    same = results["duckdb"]["digest"] == results["python"]["digest"]
    peak = results["duckdb"]["peak_mb"]
    print(f"speedup {speedup:.1f}x (target >= 2.5x); DuckDB peak RSS {peak:.0f} MB (target < 1024); "
          f"same frame: {same}")


if __name__ == "__main__":
    main()
