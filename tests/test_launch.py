"""Stages 02, 03 and 05 on 2 CPU processes under accelerate (gloo) give the bytes of 1 process; a
process killed mid-stage leaves a cache the rerun completes without a duplicate or a missing row."""

import json
import shutil
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import torch

from msr_utils import cache, evaluate, item_summaries, launch, models, sft, summarize, tiny, users
from msr_utils.config import ConfigError, load_params
from msr_utils.data import prepare
from tests.conftest import ENV, prepared_project, set_params, shard_keys

DATASET = "microlens50k"
SECTIONS = {"user_summary": {"batch_size": 4}, "item_summary": {"batch_size": 8},
            "sft": {"batch_size": 2, "lora_dropout": 0.0, "save_steps": 4, "logging_steps": 1}}


def stage_outputs(root):
    """What stages 02, 03 and 05 wrote, read back (the seconds left out)."""
    params = load_params(root / "params.yaml")
    p = evaluate.paths(params, DATASET)
    metrics = json.loads(p["metrics"].read_text())
    for variant in ("zero_shot", "fine_tuned"):
        metrics[variant] = {k: v for k, v in metrics[variant].items() if k not in ("seconds", "candidates_per_s")}
    return {"items": pd.read_parquet(p["item_summaries"]), "blocks": pd.read_parquet(p["user_summaries"]),
            "preferences": pd.read_parquet(p["preferences"]), "scores": pd.read_parquet(p["scores"]),
            "metrics": metrics}


def run_stages(root):
    params = load_params(root / "params.yaml")
    item_summaries.run(params, DATASET)
    users.run(params, DATASET)
    trained = sft.run(params, DATASET, progress=False)
    return trained, evaluate.run(params, DATASET)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A scratch project after stage 01 (tiny models, 20 users), none of the model stages run."""
    root = tmp_path_factory.mktemp("one")
    prepared_project(root, model_seed=0, **SECTIONS)
    set_params(root, data={"limit_users": 30})  # 3 valid rows: the eval loss's last batch is not full on 2 ranks
    prepare.run(load_params(root / "params.yaml"), DATASET)
    return root


@pytest.fixture(scope="module")
def one_process(prepared):
    trained, _ = run_stages(prepared)
    return stage_outputs(prepared) | {"curve": trained.curve, "sft": trained.metrics}


def copy_with(prepared, dest, keep=(), **sections):
    """A copy of the prepared project without the outputs of stages 02-05 (but `keep`'s files)."""
    shutil.copytree(prepared, dest, symlinks=True, ignore=shutil.ignore_patterns("cache", "summaries", "results"))
    for rel in keep:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(prepared / rel, dest / rel)
    set_params(dest, **sections)
    return dest


def assert_same(a: dict, b: dict):
    for name in ("items", "blocks", "preferences", "scores"):
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert a["metrics"] == b["metrics"]


def test_two_processes_write_the_bytes_of_one(prepared, one_process, tmp_path):
    """Stages 02, 03, 05: the same bytes. Stage 04 (DDP): the same steps and losses up to float rounding."""
    root = copy_with(prepared, tmp_path / "two", base={"processes": 2})
    two, one = load_params(root / "params.yaml"), load_params(prepared / "params.yaml")
    item_summaries.run(two, DATASET)  # the notebooks' calls: each starts 2 processes, returns the main one's result
    users.run(two, DATASET)
    trained = sft.run(two, DATASET, progress=False)
    assert trained.metrics["world_size"] == 2 and one_process["sft"]["world_size"] == 1
    assert trained.metrics["steps"] == one_process["sft"]["steps"]  # the same global batch
    curves = trained.curve.merge(one_process["curve"], on="step", suffixes=("_2", "_1"))
    assert len(curves) == len(one_process["curve"])
    for loss in ("train_loss", "eval_loss"):  # no dropout here: only float rounding differs
        both = curves.dropna(subset=[f"{loss}_1"])
        assert both[f"{loss}_2"].to_numpy() == pytest.approx(both[f"{loss}_1"].to_numpy(), rel=1e-4), loss
    adapter = evaluate.paths(two, DATASET)["adapter"]
    shutil.rmtree(adapter)
    shutil.copytree(evaluate.paths(one, DATASET)["adapter"], adapter)  # stage 05 on the same weights
    scored = evaluate.run(two, DATASET)
    assert scored["metrics"]["zero_shot"]["n_groups"] == one_process["metrics"]["zero_shot"]["n_groups"]
    assert_same(one_process, stage_outputs(root))
    keys = shard_keys(users.paths(two, DATASET)["cache"])
    assert len(keys) == len(set(keys)) == len(one_process["blocks"])  # every state generated once, by one rank
    for stage in (item_summaries, users):  # the very batches of one process (a shard is a batch), on 2 ranks
        assert batches(stage.paths(two, DATASET)["cache"]) == batches(stage.paths(one, DATASET)["cache"])
        shards = cache.ShardCache(stage.paths(two, DATASET)["cache"]).shards()
        assert len({s.name.split("-")[2] for s in shards}) == 2  # both processes wrote shards (a pid in each name)


def batches(cache_dir) -> list[tuple[str, ...]]:
    """The keys of each shard of a cache (one shard per generated batch), sorted."""
    return sorted(tuple(sorted(pd.read_parquet(p)[cache.KEY])) for p in cache.ShardCache(cache_dir).shards())


def test_a_killed_process_leaves_what_the_rerun_completes(prepared, one_process, tmp_path):
    root = copy_with(prepared, tmp_path / "killed", keep=[f"data/summaries/{DATASET}/item_summaries.parquet"],
                     base={"processes": 2})
    params = load_params(root / "params.yaml")
    folder = users.paths(params, DATASET)["cache"]
    kill_rank_1(root, f"users.run(load_params('{root}/params.yaml'), '{DATASET}')",  # once it has written a shard
                lambda rank: any(f"-{rank.pid}-" in s.name for s in cache.ShardCache(folder).shards()))
    written = len(shard_keys(folder))
    assert 0 < written < len(one_process["blocks"])
    users.run(params, DATASET)  # the rerun, 2 processes again
    keys = shard_keys(folder)
    assert len(keys) == len(set(keys)) == len(one_process["blocks"])  # nothing twice, nothing missing
    p = users.paths(params, DATASET)
    pd.testing.assert_frame_equal(pd.read_parquet(p["user_summaries"]), one_process["blocks"], check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(p["preferences"]), one_process["preferences"], check_exact=True)


def test_a_killed_ddp_run_resumes_from_its_checkpoint(prepared, one_process, tmp_path):
    """Stage 04 on 2 processes, rank 1 killed once a checkpoint is whole: the rerun resumes there and ends
    where one process ends (the same steps; losses within float rounding)."""
    summaries = f"data/summaries/{DATASET}"
    root = copy_with(prepared, tmp_path / "ddp", base={"processes": 2},
                     keep=[f"{summaries}/{name}.parquet" for name in ("item_summaries", "user_summaries", "user_preferences")])
    params = load_params(root / "params.yaml")
    checkpoints = sft.paths(params, DATASET)["checkpoints"]
    kill_rank_1(root, f"sft.run(load_params('{root}/params.yaml'), '{DATASET}', progress=False)",
                lambda rank: (checkpoints / "checkpoint-8" / "trainer_state.json").is_file())  # written whole
    resumed = sft.run(params, DATASET, progress=False)
    assert resumed.metrics["resumed_from_step"] >= 8 and resumed.metrics["world_size"] == 2
    assert resumed.metrics["steps"] == one_process["sft"]["steps"]
    curves = resumed.curve.merge(one_process["curve"], on="step", suffixes=("_2", "_1")).dropna(subset=["train_loss_1"])
    assert curves["step"].tolist() == one_process["curve"].dropna(subset=["train_loss"])["step"].tolist()
    assert curves["train_loss_2"].to_numpy() == pytest.approx(curves["train_loss_1"].to_numpy(), rel=1e-4)


def kill_rank_1(root, call: str, ready, timeout: float = 180) -> None:
    """Run `call` (a stage of msr_utils, on 2 processes) in a child; SIGKILL its rank 1 once `ready(rank_1)`
    holds, and see the stage fail (torchrun stops the other process)."""
    job = subprocess.Popen([sys.executable, "-c", f"from msr_utils import sft, users; from msr_utils.config import "
                            f"load_params; {call}"], env=ENV, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank_1, deadline = None, time.monotonic() + timeout
    while rank_1 is None and time.monotonic() < deadline:
        time.sleep(0.05)
        ranks = [c for c in psutil.Process(job.pid).children(recursive=True) if is_rank_1(c)]
        if ranks and ready(ranks[0]):
            rank_1 = ranks[0]
    assert rank_1 is not None, f"rank 1 of `{call}` never got ready"
    rank_1.kill()
    assert job.wait(timeout=120) != 0


def is_rank_1(process: psutil.Process) -> bool:
    try:
        return process.environ().get("RANK") == "1" and "msr_utils.launch" in " ".join(process.cmdline())
    except psutil.Error:  # gone, or not yet readable
        return False


def test_processes_param(prepared, monkeypatch):
    params = load_params(prepared / "params.yaml", {"base.processes": 0})
    assert launch.processes(params) == max(1, torch.cuda.device_count())
    assert launch.processes(load_params(prepared / "params.yaml", {"base.processes": 3})) == 3
    assert launch.world() == (0, 1) and launch.gather("x") == ["x"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="base.processes = 3 but 2 GPU"):
        launch.processes(load_params(prepared / "params.yaml", {"base.processes": 3}))
    assert launch.processes(params) == 2


def test_a_sampled_text_depends_on_its_key_not_its_batch(tmp_path):
    tiny.build(tmp_path, seed=0)
    lm = models.load(tmp_path / tiny.LM_DIR, kind="lm")
    texts = [summarize.render(lm, [{"role": "user", "content": f"Summarise item {i}, a film about cats."}])
             for i in range(3)]
    gen = summarize.generation_kwargs(12, True, 0.6, 0.9)
    together = summarize.generate_batch(lm, texts, [None] * 3, gen, keys=["a", "b", "c"], seed=1)
    alone = summarize.generate_batch(lm, texts[2:], [None], gen, keys=["c"], seed=1)
    assert together[2] == alone[0]
    assert summarize.generate_batch(lm, texts[2:], [None], gen, keys=["c"], seed=2) != alone
    with pytest.raises(ValueError, match="one key per text"):
        summarize.generate_batch(lm, texts, [None] * 3, gen)


def test_keyed_sampling_draws_from_the_softmax():
    """The exponential race picks token i with probability softmax(logits)_i (4,000 draws, 4 sigma)."""
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]])
    p = torch.softmax(logits, -1)[0]
    picks = torch.tensor([int(summarize.KeyedSampling([f"k{i}"], 0, 5)(torch.zeros((1, 7), dtype=torch.long),
                                                                      logits).argmax()) for i in range(4000)])
    freq = torch.bincount(picks, minlength=4) / 4000
    assert freq[3] == 0
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / 4000).sqrt() + 1e-9).all(), (freq, p)
