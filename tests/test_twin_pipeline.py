"""The twin profile end to end: stages 01-05 and the tallrec ablation through DVC with the twins (the
paper's tokenizers, templates and image processing; random small weights), in a temporary copy."""

import json

import pytest
import torch
import yaml

from tests.conftest import repo_copy, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # dvc repro of 6 stages: minutes


def run_twin(repo, quantization: str = "none") -> dict:
    """`profile: twin` (the paper's settings on the twin models, cut to 10 users) through DVC: stages
    01-05 and the tallrec ablation. Returns the stage metrics."""
    path = repo / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    tree["base"]["profile"] = "twin"
    tree["models"]["twin"]["quantization"] = quantization
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    ds = "microlens50k"
    sh("dvc", "repro", f"evaluation@{ds}", f"ablations@{ds}-tallrec", cwd=repo)
    assert "changed" not in sh("dvc", "status", f"evaluation@{ds}", f"ablations@{ds}-tallrec", cwd=repo)
    results = repo / "results" / ds
    out = {name: json.loads((results / f"{name}.json").read_text())
           for name in ("data_prep", "item_summaries", "user_summaries", "sft", "metrics")}
    out["tallrec"] = json.loads((results / "ablations" / "tallrec.json").read_text())
    out["table"] = (results / "results.csv").read_text()
    return out


def test_twin_profile_runs_the_paper_path_end_to_end(tmp_path_factory):
    m = run_twin(repo_copy(tmp_path_factory.mktemp("twin")))
    assert (m["data_prep"]["users"], m["data_prep"]["rows_test"]) == (10, 1)
    assert m["item_summaries"]["model"].startswith("data/models/twin-vlm@")
    assert m["item_summaries"]["placeholder_images_used"] == 12  # the cut: 12 items, each with its cover card
    assert m["user_summaries"]["model"].startswith("data/models/twin-lm@") and m["user_summaries"]["llm_calls"] == 20
    sft = m["sft"]
    assert sft["train_examples"] == 4 and sft["train_with_image"] == 4 and sft["train_too_long"] == 0
    assert sft["steps"] == 4  # 4 examples, batch 1 x grad_accum 4, 4 epochs: the paper's settings
    assert 1176 < sft["train_max_tokens"] <= 4096  # a 128 px card expands to 1,176 image tokens
    for variant in ("zero_shot", "fine_tuned"):
        assert m["metrics"][variant]["n_groups"] == 1 and m["metrics"][variant]["model"].startswith(
            "data/models/twin-vlm@")
    assert m["tallrec"]["scored"] == "fine_tuned" and m["tallrec"]["metrics"]["n_groups"] == 1
    assert "pipeline check (twin random model)" in m["table"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twin_profile_with_qlora_and_bf16_on_cuda(tmp_path_factory):
    m = run_twin(repo_copy(tmp_path_factory.mktemp("twin_gpu")), quantization="4bit")
    assert m["sft"]["quantization"] == "4bit" and m["sft"]["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert m["metrics"]["fine_tuned"]["n_groups"] == 1
