"""A learning curve on the valid split: stage 04's checkpoints, each scored on every valid candidate.

It answers: does the recommender get better as fine-tuning sees more examples? Stage 04 saves a
checkpoint every sft.save_steps optimizer steps; with sft.keep_checkpoints: 0 it keeps them all
(data/checkpoints/<dataset>/checkpoint-<step>). Each checkpoint's adapter, and the base model (0
examples, zero-shot), scores the valid rows' candidates, the target and its data.neg_eval negatives
as stage 05 scores the test rows (evaluate.build_examples, evaluate.score_variant). Each point
carries its AUC with a 95% bootstrap interval over valid rows and its paired difference from
zero-shot (msr_utils.intervals). Settings are read off this curve, on valid; the test split is
scored once, by stage 05. Under a linear lr schedule a checkpoint is the run part-way through, not a
run on fewer examples.

CLI: python -m msr_utils.sft --dataset microlens50k --set sft.keep_checkpoints=0 [--set ...]
     python -m msr_utils.curve --dataset microlens50k --set sft.keep_checkpoints=0 [the same --set]
     -> results/<dataset>/learning_curve.{csv,json,png}
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from tqdm.auto import tqdm

from msr_utils import config, evaluate, intervals, models, sft
from msr_utils.config import DATASETS, Params, load_params
from msr_utils.threads import pool, processes

ZERO = "step_0"
COLUMNS = ["point", "step", "examples", "auc", "auc_lo", "auc_hi", "minus_zero_shot_lo", "minus_zero_shot_hi",
           "hr@5", "answer_mass"]


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved checkpoint with an adapter, by step."""
    found = [(int(d.name.split("-")[-1]), d) for d in folder.glob("checkpoint-*")
             if (d / "adapter_config.json").is_file()]
    return sorted(found)


def examples_seen(checkpoint: Path, train_examples: int) -> int:
    """Training examples the run had seen at `checkpoint` (its trainer_state.json's epoch)."""
    return round(json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] * train_examples)


def score_point(params: Params, name: str, adapter: Path | None, examples: pd.DataFrame,
                expect_size: int, base: models.LoadedModel | None = None) -> tuple[pd.DataFrame, dict]:
    """One point's scores and metrics: the profile's base model, plus `adapter` if given. `base`: the base
    model this process loaded, copied (one process: load_adapter works in place), else loaded here (a
    process of its own)."""
    torch.manual_seed(params.base.seed)
    loaded = copy.deepcopy(base) if base is not None else models.load_profile(params, "vlm")
    if adapter is not None:
        loaded = evaluate.load_adapter(loaded, adapter)
    return evaluate.score_variant(params, loaded, examples, name, expect_size, progress=False)


def table(params: Params, scores: pd.DataFrame, steps: dict[str, int], seen: dict[str, int],
          answer_mass: dict[str, float], expect_size: int) -> pd.DataFrame:
    """One row per point (COLUMNS, metrics x 100): AUC with its interval, its paired difference from zero-shot."""
    rows, i = evaluate.scored_rows(params, scores, expect_size), params.eval.intervals
    out = []
    for name, row in rows.items():
        lo, hi = intervals.interval(row, "auc", i.resamples, params.base.seed, i.level)
        d_lo, d_hi = (intervals.difference_interval(row, rows[ZERO], "auc", i.resamples, params.base.seed, i.level)
                      if name != ZERO else (0.0, 0.0))
        out.append({"point": name, "step": steps[name], "examples": seen[name], "auc": row.point("auc"),
                    "auc_lo": lo, "auc_hi": hi, "minus_zero_shot_lo": d_lo, "minus_zero_shot_hi": d_hi,
                    "hr@5": row.point("hr@5"), "answer_mass": answer_mass[name]})
    frame = pd.DataFrame(out)[COLUMNS]
    scaled = [c for c in COLUMNS if c.startswith(("auc", "minus", "hr"))]
    frame[scaled] = (100 * frame[scaled]).round(2)
    return frame


def plot(curve: pd.DataFrame, title: str = ""):
    """Valid AUC against training examples seen, with its 95% interval; chance at 50."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(curve["examples"], curve["auc_lo"], curve["auc_hi"], alpha=0.25, label="95% interval")
    ax.plot(curve["examples"], curve["auc"], marker="o", label="valid AUC")
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance")
    ax.set(xlabel="training examples seen", ylabel="AUC (x 100)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(params: Params, dataset: str, progress: bool = True) -> dict:
    """Score the base model and every kept checkpoint on the valid candidates; write the curve."""
    start, p = time.perf_counter(), sft.paths(params, dataset)
    points = checkpoints(p["checkpoints"])
    if not points:
        raise FileNotFoundError(f"no checkpoint with an adapter in {p['checkpoints']}: run `python -m msr_utils.sft "
                                f"--dataset {dataset} --set sft.keep_checkpoints=0` (and the same --set here) first")
    if not p["metrics"].is_file():
        raise FileNotFoundError(f"{p['metrics']} not found: the stage-04 run that saved the checkpoints writes it")
    train_examples = json.loads(p["metrics"].read_text())["train_examples"]
    torch.manual_seed(params.base.seed)
    loaded = models.load_profile(params, "vlm")
    valid = evaluate.build_examples(params, dataset, loaded, split="valid")
    expect_size = 1 + json.loads(p["info"].read_text())["neg_eval"]
    jobs = [(ZERO, None)] + [(f"step_{step}", folder) for step, folder in points]
    steps = {ZERO: 0} | {f"step_{step}": step for step, _ in points}
    seen = {ZERO: 0} | {f"step_{step}": examples_seen(folder, train_examples) for step, folder in points}
    n = 1 if loaded.device.type != "cpu" else processes(params.eval.workers, len(jobs))
    base = loaded if n == 1 else None  # n > 1: each job loads its own model in its process
    del loaded
    with pool(n) as at:
        futures = [at.submit(score_point, params, name, adapter, valid, expect_size, base) for name, adapter in jobs]
        done = [f.result() for f in tqdm(futures, desc=f"checkpoints ({n} processes)", disable=not progress)]
    scores = pd.concat([s for s, _ in done], ignore_index=True)
    curve = table(params, scores, steps, seen, {name: m["answer_mass"] for (name, _), (_, m) in zip(jobs, done)},
                  expect_size)
    out = {"dataset": dataset, "model": params.models_in_use.recommender, "split": "valid",
           "valid_rows": int(valid[["user_id", "target_pos"]].drop_duplicates().shape[0]),
           "candidates_per_row": expect_size, "train_examples": train_examples,
           "sft": params.sft.model_dump(), "seconds": round(time.perf_counter() - start, 1),
           "points": curve.to_dict("records")}
    folder = p["results"]
    folder.mkdir(parents=True, exist_ok=True)
    curve.to_csv(folder / "learning_curve.csv", index=False)
    (folder / "learning_curve.json").write_text(json.dumps(out, indent=2) + "\n")
    fig = plot(curve, f"{dataset}: valid AUC while fine-tuning ({out['valid_rows']} rows x {expect_size})")
    fig.savefig(folder / "learning_curve.png", dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--params", default=None, help="params.yaml (default: found upwards from the cwd)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param as in the stage-04 run, e.g. --set sft.limit=600 (repeatable)")
    args = parser.parse_args(argv)
    out = run(load_params(args.params, config.parse_sets(args.set)), args.dataset)
    print(pd.DataFrame(out["points"]).to_string(index=False))


if __name__ == "__main__":
    main()
