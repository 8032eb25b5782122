"""Print each dataset's result tables as the pipeline wrote them (`make results`).

For every dataset in `base.datasets`: results/<dataset>/results.md (stage 05) and comparison.md
(stage 06), under a header saying whether the numbers are a pipeline check (a profile with random
weights) or a result. A missing file exits non-zero naming it and the stage that writes it."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from msr_utils.config import Params, load_params, pipeline_check
from msr_utils.paths import artifacts, require

STAGE_05 = "stage 05 (evaluation: `dvc repro evaluation`)"
STAGE_06 = "stage 06 (baselines: `dvc repro baselines`)"


def header(dataset: str, profile: str) -> str:
    kind = ("PIPELINE CHECK: random weights, the numbers check the pipeline and are not results"
            if pipeline_check(profile) else "RESULT")
    return f"==> {dataset} (profile {profile}): {kind}"


def text(params: Params, dataset: str) -> str:
    """The header, then results.md and comparison.md as they are."""
    p = artifacts(params, dataset)
    tables = [require(p["table_md"], STAGE_05), require(p["comparison_md"], STAGE_06)]
    profile = pd.read_csv(require(p["table_csv"], STAGE_05))["profile"].iloc[0]
    parts = [header(dataset, profile)]
    for path in tables:
        parts += [f"--- {path.relative_to(params.root)}", path.read_text().rstrip()]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=None, help="params.yaml (default: found upwards from the cwd)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        print("\n".join(text(params, dataset) for dataset in params.base.datasets), end="")
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
