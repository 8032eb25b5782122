import pytest
import yaml

from msr_utils import config
from msr_utils.config import ConfigError, ProfileShadowWarning, find_root, load_params, profile_settings
from tests.conftest import ROOT, set_params


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.base.profile == "small" and p.data.source == "sample"
    assert p.root == ROOT


def test_bad_value_names_key_and_allowed_values(project):
    path = set_params(project, data={"protocol": "random"})
    with pytest.raises(ConfigError, match=r"data\.protocol = 'random'.*'paper' or 'loo'"):
        load_params(path)


def test_unknown_key_is_an_error(project):
    path = set_params(project, data={"kcore_usr": 3})
    with pytest.raises(ConfigError, match=r"data\.kcore_usr.*unknown key"):
        load_params(path)


def test_bad_dataset_name(project):
    path = set_params(project, base={"datasets": ["movielens"]})
    with pytest.raises(ConfigError, match=r"base\.datasets\.0 = 'movielens'.*microlens50k"):
        load_params(path)


def test_split_ratio_must_sum_to_one(project):
    path = set_params(project, data={"split_ratio": [0.5, 0.2, 0.2]})
    with pytest.raises(ConfigError, match="data.split_ratio"):
        load_params(path)


def test_overrides_win_and_none_keeps_file_value(project):
    p = load_params(project / "params.yaml", {"data.protocol": "loo", "data.kcore_user": None})
    assert p.data.protocol == "loo"
    assert p.data.kcore_user is None  # from the file
    with pytest.raises(ConfigError, match="data.limit_users"):
        load_params(project / "params.yaml", {"data.limit_users": -1})


def test_find_root_walks_up(project, monkeypatch):
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")
    assert find_root() == project.resolve()
    assert load_params().root == project.resolve()


# --- profiles ---------------------------------------------------------------------------------------

def test_profile_fills_what_the_sections_leave_out_and_a_section_key_wins(project):
    assert load_params(project / "params.yaml", {"base.profile": "paper"}).sft.lr == 2e-5
    assert load_params(project / "params.yaml").sft.lr == 1e-3  # tiny
    assert load_params(project / "params.yaml", {"base.profile": "paper", "sft.lr": 1e-4}).sft.lr == 1e-4
    path = set_params(project, sft={"lr": 3e-4})  # what `dvc exp run -S sft.lr=3e-4` writes
    with pytest.warns(ProfileShadowWarning, match=r"sft\.lr = 0\.0003 .* wins over profile 'paper''s 2e-05"):
        assert load_params(path, {"base.profile": "paper"}).sft.lr == 3e-4


def test_twin_extends_paper(project):
    twin, paper = (load_params(project / "params.yaml", {"base.profile": p}) for p in ("twin", "paper"))
    assert twin.recommender.order == paper.recommender.order == "image_first"
    assert (twin.data.limit_users, paper.data.limit_users) == (10, 0)


@pytest.mark.parametrize("profiles, message", [
    ({"tiny": {"sft": {"lrr": 1}}}, r"profile 'tiny': 'sft\.lrr' is not a params key"),
    ({"huge": {"sft": {"lr": 1}}}, r"unknown profile 'huge'"),
    ({"twin": {"extends": "nowhere"}}, r"profile 'twin': extends 'nowhere'"),
    ({"tiny": {"base": {"seed": 1}}}, r"'base\.seed' is not a params key a profile can set"),
])
def test_bad_profiles_are_named(project, profiles, message):
    path = set_params(project, profiles=profiles)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_a_profile_sets_its_processes_and_a_section_value_wins(project):
    """base.processes is the one base key a profile may set (how many processes suit its models)."""
    assert load_params(project / "params.yaml", {"base.profile": "small"}).base.processes == 2
    assert load_params(project / "params.yaml", {"base.profile": "tiny"}).base.processes == 1
    path = set_params(project, base={"processes": 1})
    with pytest.warns(ProfileShadowWarning, match=r"base\.processes = 1 .* wins over profile 'small''s 2"):
        assert load_params(path, {"base.profile": "small"}).base.processes == 1


def test_ablations_run_names_known_variants(project):
    with pytest.raises(ConfigError, match=r"ablations.run names 'block_4', not in ablations.variants"):
        load_params(project / "params.yaml", {"ablations.run": ["block_3", "block_4"]})


def test_bad_profile_value_names_the_key(project):
    path = set_params(project, profiles={"paper": {"recommender": {"order": "sideways"}}})
    with pytest.raises(ConfigError, match=r"recommender\.order = 'sideways'"):
        load_params(path, {"base.profile": "paper"})


def docs_table(heading: str, header: bool = False) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the first table after `heading` in docs/profiles.md; with
    `header`, its header row first."""
    lines = (ROOT / "docs" / "profiles.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == heading)
    rows, inside = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            inside = True
            rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
        elif inside:
            break
    return rows[:1] + rows[2:] if header else rows[2:]  # past the header and the |---| line


def resolved(params, knob: str):
    node = params.models_in_use if knob.startswith("models.*.") else params
    for part in knob.removeprefix("models.*.").split("."):
        node = getattr(node, part)
    return node


def test_readme_paper_settings_table_is_the_resolved_paper_and_tiny_profiles(project):
    """README's table of the paper's settings: each row's paper and tiny values are what the profiles
    resolve to, and every key a profile sets has a row."""
    head, *rows = docs_table("The paper's settings (`profile: paper`)", header=True)
    assert head == ["knob", "profile: paper", "ours (tiny)", "paper's text", "official code",
                    "what `paper` follows, and why"]  # the values checked below are the first three
    assert all(len(r) == len(head) for r in rows), [r[0] for r in rows if len(r) != len(head)]
    paper, tiny = (load_params(project / "params.yaml", {"base.profile": p}) for p in ("paper", "tiny"))
    for knob, paper_value, tiny_value, *_ in rows:
        assert resolved(paper, knob) == yaml.safe_load(paper_value), knob
        assert resolved(tiny, knob) == yaml.safe_load(tiny_value), knob
    profiles = yaml.safe_load((project / "params.yaml").read_text())["profiles"]
    set_by_profiles = set(profile_settings(profiles, "paper")) | set(profile_settings(profiles, "tiny"))
    assert set_by_profiles <= {r[0] for r in rows}
    assert {"models.*.vlm", "models.*.lm", "models.*.quantization"} <= {r[0] for r in rows}


def test_parse_sets_reads_yaml_values_and_names_a_bad_item():
    assert config.parse_sets(["sft.epochs=2", "baselines.models=[pop, gru4rec]", "eval.ks=[1, 5]"]) == {
        "sft.epochs": 2, "baselines.models": ["pop", "gru4rec"], "eval.ks": [1, 5]}
    with pytest.raises(ConfigError, match="'sft.epochs'.*KEY=VALUE"):
        config.parse_sets(["sft.epochs"])
