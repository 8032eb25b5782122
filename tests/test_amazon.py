"""Amazon Reviews 2023 loaders on hand-written lines in the published schema (real parent_asins)."""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import pytest

from msr_utils.data import amazon
from msr_utils.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, DataError

# Reviews as in Baby_Products.jsonl (ids from the MLLM-MSR authors' Baby_Products_i_map.tsv).
R1 = ('{"rating": 5.0, "title": "Love it", "text": "Soft and warm.", "images": [], "asin": "B0BBM75S58", '
      '"parent_asin": "B0BBM75S58", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923, '
      '"helpful_vote": 2, "verified_purchase": true}')
R2 = ('{"rating": 3.0, "title": "Ok", "text": "Runs small.", "images": [{"small_image_url": '
      '"https://m.media-amazon.com/images/I/71x._SL256_.jpg", "medium_image_url": '
      '"https://m.media-amazon.com/images/I/71x._SL800_.jpg", "large_image_url": '
      '"https://m.media-amazon.com/images/I/71x._SL1600_.jpg", "attachment_type": "IMAGE"}], '
      '"asin": "B0BHS9NNGE", "parent_asin": "B0BHS9NNGD", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", '
      '"timestamp": 1600000000999, "helpful_vote": 0, "verified_purchase": false}')
R3 = ('{"title": "No stars", "text": "", "images": [], "asin": "B0C5RMSPWM", "parent_asin": "B0C5RMSPWM", '
      '"user_id": "AFQLNQNQYFWQZPJQZS6V3NZU4QBQ", "timestamp": 1650000000000, "helpful_vote": 0, '
      '"verified_purchase": true}')
BAD_JSON = '{"rating": 4.0, "parent_asin": "B09RZR1DNF", "user_id": "AFQLNQNQ", "timestamp": 1650000000000, "verified_purchase": tru'

# Meta as in meta_Baby_Products.jsonl.
M1 = ('{"main_category": "Baby", "title": "Muslin Swaddle Blanket", "average_rating": 4.7, "rating_number": 120, '
      '"features": ["100% cotton"], "description": ["Breathable muslin.", "Machine washable."], "price": 19.99, '
      '"images": [{"thumb": "https://m.media-amazon.com/images/I/41a._SS40_.jpg", '
      '"large": "https://m.media-amazon.com/images/I/41a.jpg", "variant": "PT01", "hi_res": null}, '
      '{"thumb": "https://m.media-amazon.com/images/I/51m._SS40_.jpg", '
      '"large": "https://m.media-amazon.com/images/I/51m.jpg", "variant": "MAIN", '
      '"hi_res": "https://m.media-amazon.com/images/I/81m._SL1500_.jpg"}], "videos": [], "store": "Aden", '
      '"categories": ["Baby Products", "Nursery"], "details": {"Brand": "Aden"}, "parent_asin": "B0BBM75S58", '
      '"bought_together": null}')
M2 = ('{"main_category": "Baby", "title": null, "description": [], "price": "None", '
      '"images": [{"thumb": "https://m.media-amazon.com/images/I/31b._SS40_.jpg", '
      '"large": "https://m.media-amazon.com/images/I/31b.jpg", "variant": "PT02", "hi_res": null}], '
      '"details": {}, "parent_asin": "B0BHS9NNGD"}')
M3 = '{"title": "Bottle Brush", "description": null, "images": [], "parent_asin": "B0C5RMSPWM"}'


def write(path: Path, lines: list[str]) -> Path:
    """Write lines as .jsonl or .jsonl.gz according to the suffix."""
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def dtypes(df) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in df.dtypes.items()}


@pytest.fixture(params=["Baby_Products.jsonl", "Baby_Products.jsonl.gz"])
def name(request) -> str:
    return request.param


def test_reviews_canonical_columns_and_seconds(tmp_path, name):
    df = amazon.load_reviews(write(tmp_path / name, [R1, R2, R3]))
    assert dtypes(df) == INTERACTION_COLUMNS
    assert df["user_id"].tolist() == ["AGKHLEW2SOWHNMFQIJGBECAF7INQ"] * 2 + ["AFQLNQNQYFWQZPJQZS6V3NZU4QBQ"]
    assert df["item_id"].tolist() == ["B0BBM75S58", "B0BHS9NNGD", "B0C5RMSPWM"]  # parent_asin, not asin
    assert df["timestamp"].tolist() == [1588687728, 1600000000, 1650000000]  # ms -> s, floored
    assert df["rating"].tolist()[:2] == [5.0, 3.0] and math.isnan(df["rating"].iloc[2])


def test_meta_items(tmp_path, name):
    items = amazon.load_meta(write(tmp_path / ("meta_" + name), [M1, M2, M3]))
    assert dtypes(items) == {"item_id": "str", **ITEM_COLUMNS}
    assert items["item_id"].tolist() == ["B0BBM75S58", "B0BHS9NNGD", "B0C5RMSPWM"]
    assert items["title"].tolist() == ["Muslin Swaddle Blanket", "", "Bottle Brush"]  # null title -> ""
    assert items["description"].iloc[0] == "Breathable muslin. Machine washable."
    assert items["description"].iloc[1:].isna().all()  # [] and null -> missing
    assert items["image_url"].iloc[0] == "https://m.media-amazon.com/images/I/51m.jpg"  # MAIN, not first
    assert items["image_url"].iloc[1] == "https://m.media-amazon.com/images/I/31b.jpg"  # no MAIN -> first
    assert items["image_url"].isna().tolist() == [False, False, True]
    assert items["image_path"].isna().all()


def test_meta_repeated_parent_asin_keeps_first(tmp_path):
    items = amazon.load_meta(write(tmp_path / "meta.jsonl", [M1, M2, M1.replace("Muslin", "Other")]))
    assert items["item_id"].tolist() == ["B0BBM75S58", "B0BHS9NNGD"]
    assert items["title"].iloc[0] == "Muslin Swaddle Blanket"


@pytest.mark.parametrize("lines, line", [
    ([BAD_JSON, R1, R2], 1),
    ([R1, R2, BAD_JSON], 3),
    ([R1, "", "  ", R2, BAD_JSON, R3], 5),  # blank lines still count as lines
    ([R1, R2, "[1, 2]"], 3),  # valid JSON, not an object
    ([R1, R2.replace('"rating": 3.0', '"rating": "three"'), R3], 2),  # wrong type
])
def test_bad_line_names_file_and_line(tmp_path, name, lines, line):
    path = write(tmp_path / name, lines)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line {line}: "):
        amazon.load_reviews(path)


@pytest.mark.parametrize("field", ["user_id", "parent_asin", "timestamp"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_required_field_names_file_field_line(tmp_path, name, field, how):
    bad = re.sub(rf'"{field}": ("[^"]*"|\d+), ', "" if how == "absent" else f'"{field}": null, ', R2)
    assert bad != R2
    path = write(tmp_path / name, [R1, "", bad, R3, bad])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line 3: required field '{field}' .* 2 of 4"):
        amazon.load_reviews(path)


def test_other_schema_is_rejected_with_hint(tmp_path):
    old = '{"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "overall": 5.0, "unixReviewTime": 1393545600}'
    path = write(tmp_path / "Baby.jsonl", [old])
    with pytest.raises(DataError, match=r"line 1: required field 'user_id' .*Amazon Reviews 2023 schema"):
        amazon.load_reviews(path)


def test_meta_missing_parent_asin(tmp_path):
    path = write(tmp_path / "meta.jsonl.gz", [M1, M3.replace(', "parent_asin": "B0C5RMSPWM"', "")])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line 2: required field 'parent_asin'"):
        amazon.load_meta(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        amazon.load_reviews(tmp_path / "nope.jsonl")
    data = gzip.compress(("\n".join([R1, R2] * 50) + "\n").encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])  # a killed download
    with pytest.raises(DataError, match=re.escape(str(cut))):
        amazon.load_reviews(cut)
