import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def project(tmp_path) -> Path:
    """A scratch project root: params.yaml (defaults) + a link to the shipped sample."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample").symlink_to(SAMPLE)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def set_params(project: Path, **sections) -> Path:
    """Update sections of the scratch project's params.yaml; returns its path."""
    path = project / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(tree))
    return path
