"""Load and validate `params.yaml`; every knob of the pipeline lives there.

`load_params(overrides={"data.protocol": "loo"})` applies dotted overrides (papermill
parameters; `None` means "keep params.yaml") and fails with a message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DATASETS = ("microlens50k", "amazon_baby", "amazon_games")


class ConfigError(ValueError):
    """A bad params.yaml value; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(_Section):
    seed: int = 2024
    profile: Literal["tiny", "paper"] = "tiny"
    datasets: list[Literal["microlens50k", "amazon_baby", "amazon_games"]] = ["microlens50k"]


class Data(_Section):
    source: Literal["sample", "full"] = "sample"
    download: bool = False
    download_images: bool = False
    sample_dir: str = "data/sample"
    raw_dir: str = "data/raw"
    out_dir: str = "data/processed"
    limit_users: int = Field(300, ge=0)  # 0 = all users
    kcore_user: int | None = Field(None, ge=1)  # None = dataset default
    kcore_item: int | None = Field(None, ge=1)
    protocol: Literal["paper", "loo"] = "paper"
    paper_n_items: int | None = Field(None, ge=2)  # None = dataset default
    max_history: int = Field(20, ge=1)
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)
    neg_train: int = Field(1, ge=1)
    neg_eval: int = Field(20, ge=1)

    @field_validator("split_ratio")
    @classmethod
    def _ratios_sum_to_one(cls, v):
        if abs(sum(v) - 1.0) > 1e-6 or min(v) <= 0:
            raise ValueError(f"must be three positive fractions summing to 1, got {list(v)}")
        return v


class Params(_Section):
    base: Base = Base()
    data: Data = Data()
    root: Path = Path(".")

    def path(self, rel: str | Path) -> Path:
        """A params path, resolved against the project root."""
        return self.root / rel


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml found in {here} or any parent folder")


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[leaf] = value


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key} = {value!r}: {msg}")
    return "\n".join(lines)


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (found upwards from the cwd when `path` is None) and validate it."""
    path = Path(path) if path else find_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        return Params(**tree, root=path.resolve().parent)
    except ValidationError as err:
        raise ConfigError(_explain(err, str(path))) from None
