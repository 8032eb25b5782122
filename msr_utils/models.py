"""Load a model for generation from a hub id or a local directory (same code path for both).

kind "vlm": image-text-to-text models (LLaVA, LLaVA-NeXT, Qwen2-VL class) via
AutoModelForImageTextToText + AutoProcessor. kind "lm": AutoModelForCausalLM + AutoTokenizer.
CUDA -> bf16 (fp16 where bf16 is unsupported), optional 4-bit NF4; CPU -> fp32, or bf16 for a folder
saved in bf16 (msr_utils.small on a CPU with bf16 instructions). The device is
decided by torch.cuda.is_available(), never by catching errors: bitsandbytes on CPU loads without
complaint and breaks later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
)

from msr_utils.threads import set_torch_threads

KINDS = ("vlm", "lm")
QUANTIZATIONS = (None, "4bit")


class ModelLoadError(OSError):
    """A model reference could not be resolved; the message says how to get it."""


@dataclass
class LoadedModel:
    model: Any
    processor: Any  # AutoProcessor for "vlm"; the tokenizer itself for "lm"
    tokenizer: Any
    device: torch.device
    model_ref: str
    kind: str


def load(model_ref: str | Path, *, kind: str, quantization: str | None = None,
         device: str | torch.device | None = None) -> LoadedModel:
    """Load `model_ref` (hub id or local dir) in eval mode with left padding for generation."""
    ref = str(model_ref)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} for model {ref!r}: expected one of {KINDS}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} for model {ref!r}: expected one of {QUANTIZATIONS}")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if quantization == "4bit" and (dev.type != "cuda" or not torch.cuda.is_available()):
        raise ValueError(
            f"quantization='4bit' for model {ref!r} needs CUDA (bitsandbytes 4-bit does not work on "
            f"CPU; device is {dev}). Use quantization=None on CPU (fp32, plain LoRA).")
    check_available(ref)

    kwargs: dict[str, Any] = {"dtype": cpu_dtype(ref)}
    if dev.type == "cuda":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": dev.index if dev.index is not None else torch.cuda.current_device()}  # per DDP rank

    model_cls = AutoModelForImageTextToText if kind == "vlm" else AutoModelForCausalLM
    try:
        model = model_cls.from_pretrained(ref, **kwargs)
        processor = (AutoProcessor if kind == "vlm" else AutoTokenizer).from_pretrained(ref)
    except OSError as err:  # files missing on the hub or in a partial download
        raise ModelLoadError(f"{_not_found(ref)} ({err})") from err
    if quantization is None:
        model.to(dev)
    model.eval()

    tokenizer = processor.tokenizer if kind == "vlm" else processor
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, processor, tokenizer, dev, ref, kind)


def cpu_dtype(ref: str) -> torch.dtype:
    """The dtype on CPU: bf16 for a local folder saved in bf16 (config.json), fp32 otherwise."""
    config = Path(ref) / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    return torch.bfloat16 if (saved.get("dtype") or saved.get("torch_dtype")) == "bfloat16" else torch.float32


def check_available(ref: str) -> None:
    """Fail early, naming the model, when `ref` is neither a local dir nor loadable offline."""
    if Path(ref).is_dir():
        return
    if Path(ref).exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelLoadError(f"model {ref!r}: not a model directory (expected a folder with config.json "
                             "or a hub id like 'org/name')")
    if is_offline_mode() and not isinstance(try_to_load_from_cache(ref, "config.json"), str):
        raise ModelLoadError(_not_found(ref))


def _not_found(ref: str) -> str:
    return (f"model {ref!r} is not a local directory and not in the Hugging Face cache. Download it "
            f"with `hf download {ref}` (needs network), or unset HF_HUB_OFFLINE / set HF_HUB_OFFLINE=0 "
            "to let transformers fetch it, or pass the path of a saved model directory.")


def load_profile(params, role: str) -> LoadedModel:
    """The active profile's model for `role` ("vlm" | "lm") as set in params.yaml `models`; a profile
    whose vlm is null (small) gives its LM for "vlm" (kind "lm": the stages take their text-only path).

    A relative folder is resolved against the project root. The cache identity (`model_ref`) is
    the params string, plus a fingerprint of the weights for a local folder (a rebuilt tiny model
    with another seed must not reuse the old model's cached generations). Sets torch's CPU threads
    to base.threads (0: left as they are) for the stage that loads it."""
    set_torch_threads(params.base.threads)
    chosen = params.models_in_use
    role = chosen.role(role)  # no VLM in this profile: its stages run the LM on text
    ref = getattr(chosen, role)
    local = params.path(ref)
    if params.base.profile == "paper" and not torch.cuda.is_available():
        raise ModelLoadError(f"base.profile = 'paper' loads {ref!r} ({chosen.quantization}) and needs a CUDA "
                             "GPU; none is visible. Use base.profile: tiny on a CPU.")
    if not local.is_dir() and Path(ref).parts[:2] == ("data", "models"):  # built here, not downloaded
        raise ModelLoadError(f"model folder {local} not found: build it with `dvc repro models` (tiny and twin "
                             "checkpoints, offline)")
    quantization = None if chosen.quantization == "none" else chosen.quantization
    loaded = load(local if local.is_dir() else ref, kind=role, quantization=quantization)
    loaded.model_ref = f"{ref}@{fingerprint(local)}" if local.is_dir() else ref
    return loaded


def fingerprint(folder: Path, head: int = 1 << 16) -> str:
    """Short hash of a saved model folder: config.json plus size and first bytes of each weight file
    (cheap even for a 7B checkpoint; a re-initialised model differs in its first tensor)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(head))
    return digest.hexdigest()[:10]
