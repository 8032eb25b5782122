"""The learning curve (msr_utils.curve): every kept checkpoint scored on every valid candidate (tiny model)."""

import numpy as np
import pandas as pd
import pytest

from msr_utils import curve, evaluate, metrics, models, scoring, sft
from msr_utils.config import load_params
from tests.conftest import sft_project

DATASET = "microlens50k"
# 12 train rows 1:1 = 24 examples, 4 a step: 6 steps, a checkpoint every 2, all kept
RUN = {"limit": 12, "batch_size": 4, "epochs": 1, "lr": 3.0e-3, "logging_steps": 1, "save_steps": 2,
       "keep_checkpoints": 0}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = sft_project(tmp_path_factory.mktemp("curve"), sft=RUN, base={"processes": 1}, eval={"workers": 1})
    sft.run(load_params(root / "params.yaml"), DATASET, progress=False)
    return root


def test_every_checkpoint_is_a_point_scored_on_all_valid_candidates(project):
    params = load_params(project / "params.yaml")
    out = curve.run(params, DATASET, progress=False)
    points = pd.DataFrame(out["points"])
    assert points["step"].tolist() == [0, 2, 4, 6]  # sft.keep_checkpoints: 0 keeps every checkpoint
    assert points["examples"].tolist() == [0, 8, 16, 24]
    assert out["candidates_per_row"] == 21 and out["valid_rows"] == len(pd.read_parquet(sft.paths(params, DATASET)["valid"]))
    assert (points["auc_lo"] <= points["auc"]).all() and (points["auc"] <= points["auc_hi"]).all()
    assert points.loc[0, ["minus_zero_shot_lo", "minus_zero_shot_hi"]].tolist() == [0, 0]
    on_disk = pd.read_csv(sft.paths(params, DATASET)["results"] / "learning_curve.csv")
    pd.testing.assert_frame_equal(on_disk, points[curve.COLUMNS], check_dtype=False)

    # the last checkpoint is the saved adapter, the first point the base model: stage 05's scorer on the valid rows
    loaded = models.load_profile(params, "vlm")
    valid = evaluate.build_examples(params, DATASET, loaded, split="valid")
    assert len(valid) == 21 * out["valid_rows"] and valid["label"].sum() == out["valid_rows"]
    for point, model in ((0, loaded), (3, evaluate.load_adapter(models.load_profile(params, "vlm"),
                                                                sft.paths(params, DATASET)["adapter"]))):
        scores = valid.assign(score=scoring.score_examples(model, valid, image_root=params.root, progress=False))
        grouped = scores.assign(**{evaluate.GROUP: evaluate.group_ids(scores)})
        auc = metrics.evaluate(grouped, ks=params.eval.ks, group_col=evaluate.GROUP)["auc"]
        assert points.loc[point, "auc"] == pytest.approx(100 * auc, abs=0.01)
    assert not np.isclose(points.loc[0, "answer_mass"], points.loc[3, "answer_mass"])  # the adapter changed it


def test_without_checkpoints_it_names_the_command(project, tmp_path):
    params = load_params(project / "params.yaml")
    folder = sft.paths(params, DATASET)["checkpoints"]
    folder.rename(tmp_path / "kept")
    try:
        with pytest.raises(FileNotFoundError, match="--set sft.keep_checkpoints=0"):
            curve.run(params, DATASET, progress=False)
    finally:
        (tmp_path / "kept").rename(folder)
