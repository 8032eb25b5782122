import pytest

from msr_utils.config import ConfigError, find_root, load_params
from tests.conftest import ROOT, set_params


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.base.profile == "tiny" and p.data.source == "sample"
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
