"""A scratch project: a folder with its own params.yaml (the main one plus dotted overrides) and
symlinks to what it reads from the main project, so the stage code runs there unchanged. Used by
the ablation variants, the scale benchmark and the full-data baselines."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from msr_utils import config
from msr_utils.config import Params


def params_at(main: Params, root: Path, overrides: dict[str, Any]) -> Params:
    """Write root/params.yaml (main's params.yaml + `overrides`, which win over the profile on
    purpose, without a warning) and load it: a project at `root`."""
    tree = yaml.safe_load((main.root / "params.yaml").read_text()) or {}
    for key, value in overrides.items():
        config.set_dotted(tree, key, value)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", config.ProfileShadowWarning)
        return config.load_params(root / "params.yaml")


def symlink(here: Path, target: Path) -> Path:
    """`here` -> `target` (relative link), replacing whatever `here` was."""
    here.parent.mkdir(parents=True, exist_ok=True)
    if here.is_symlink() or here.is_file():
        here.unlink()
    elif here.is_dir():
        shutil.rmtree(here)
    here.symlink_to(os.path.relpath(target, here.parent))
    return here


def link(main: Params, root: Path, rels: list[str]) -> list[Path]:
    """Link each of main's `rels` (relative paths) that exists into `root`; returns the links."""
    return [symlink(root / rel, main.path(rel).resolve()) for rel in rels if main.path(rel).exists()]


def unlink(paths: list[Path]) -> None:
    for path in paths:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
