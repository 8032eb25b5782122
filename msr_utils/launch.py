"""A model stage on N processes under accelerate, the one engine (no hand-written process groups).

`base.processes` decides how many (0 = one per visible GPU, one without a GPU). A stage's `run` asks
`wanted(params)`; if so it calls `run(params, stage, dataset)`, which starts N processes with
`accelerate launch` (torchrun underneath: nccl on GPUs, gloo on CPUs), each running that same stage
function on the same params, and returns what the main process returned. So a notebook run by
papermill and `dvc repro` use N processes alike. Inside, the engines split the work by `world()`:

- generation (stages 02, 03; `summarize.generate_cached`): the batches a single process would run,
  batch i to rank i mod N; each rank appends its own shards to the cache; the new records are
  gathered to every rank (so the next block step of stage 03 sees them all);
- scoring (stage 05; `scoring.score_examples`): evaluation groups, i mod N, gathered in order;
- training (stage 04; `sft.run`): DDP through the HF Trainer, the global batch kept.

Only the main process writes a stage's outputs. Greedy texts and scores are the same bytes as with one
process: every batch is the one a single process forms. Several machines: the same entry point under
`accelerate launch --num_machines M --machine_rank R ...` on each (docs/scale.md).

    accelerate launch --multi_gpu --num_processes 8 -m msr_utils.launch user_summaries --dataset microlens50k
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from importlib import import_module
from pathlib import Path

import torch

STAGES = {"item_summaries": "msr_utils.item_summaries", "user_summaries": "msr_utils.users",
          "sft": "msr_utils.sft", "evaluation": "msr_utils.evaluate"}  # each module's run(params, dataset)
INSIDE = "MSR_LAUNCHED"  # set in the launched processes: their stage runs here, it launches nothing


class LaunchError(RuntimeError):
    """The launched processes failed; the message names the stage, N and the exit status."""


def processes(params) -> int:
    """Processes a model stage uses: base.processes, 0 = one per visible GPU (one without). On GPUs,
    one process per GPU: more fails naming the param."""
    gpus = torch.cuda.device_count()
    n = params.base.processes or max(1, gpus)
    if gpus and n > gpus:
        from msr_utils.config import ConfigError

        raise ConfigError(f"base.processes = {n} but {gpus} GPU(s) are visible: one process per GPU (0 = all of them)")
    return n


def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) outside a launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def gather(obj) -> list:
    """`obj` of every process, in rank order, on every process ([obj] alone)."""
    if world()[1] == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def wanted(params) -> bool:
    """Whether a stage called here should start its processes: N > 1 and not already launched."""
    return processes(params) > 1 and not os.environ.get(INSIDE)


def run(params, stage: str, dataset: str):
    """STAGES[stage].run(params, dataset) on `processes(params)` processes; the main one's result."""
    n = processes(params)
    with tempfile.TemporaryDirectory(prefix=f"launch-{stage}-") as tmp:
        job, result = Path(tmp) / "params.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps(params))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", "-m", "msr_utils.launch", stage, "--dataset", dataset,
               "--job", str(job), "--result", str(result)]
        threads = {"OMP_NUM_THREADS": str(params.base.threads)} if params.base.threads else {}
        done = subprocess.run(cmd, env={**os.environ, **threads})
        if done.returncode or not result.is_file():
            raise LaunchError(f"stage {stage} ({dataset}) on {n} processes (base.processes = "
                              f"{params.base.processes}) failed with exit status {done.returncode}: each "
                              "process's output is above; a rerun resumes from what the cache holds")
        return pickle.loads(result.read_bytes())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One model stage in each process `accelerate launch` starts: "
                                 "its share of the work; the main process writes the outputs.")
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--root", default=".", help="project root with params.yaml (when no --job)")
    ap.add_argument("--job", help="pickled params (what `run` passes)")
    ap.add_argument("--result", help="where the main process pickles the stage's result")
    args = ap.parse_args(argv)
    os.environ[INSIDE] = "1"
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # the process group: gloo on CPU, nccl on GPUs
    if args.job:
        params = pickle.loads(Path(args.job).read_bytes())
    else:
        from msr_utils.config import load_params

        params = load_params(Path(args.root) / "params.yaml")
    try:
        out = import_module(STAGES[args.stage]).run(params, args.dataset)
        if state.is_main_process and args.result:  # less what cannot leave the process (sft: the model)
            Path(args.result).write_bytes(pickle.dumps(out.portable() if hasattr(out, "portable") else out))
        state.wait_for_everyone()
    finally:
        state.destroy_process_group()  # gloo aborts at exit without it


if __name__ == "__main__":
    main()
