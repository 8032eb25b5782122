import pytest

from msr_utils.data import microlens
from msr_utils.data.schema import DataError
from tests.conftest import SAMPLE


def test_pairs_tsv_crlf(tmp_path):
    path = tmp_path / "MicroLens-50k_pairs.tsv"
    path.write_bytes(b"1\t10 20 30\r\n2\t30 40\r\n")
    df = microlens.load_pairs_tsv(path)
    assert df["user_id"].tolist() == ["1", "1", "1", "2", "2"]
    assert df["item_id"].tolist() == ["10", "20", "30", "30", "40"]  # no stray '\r'
    assert df["timestamp"].tolist() == [0, 1, 2, 0, 1]
    assert str(df["user_id"].dtype) == "str" and df["timestamp"].dtype == "int64"


def test_pairs_tsv_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "MicroLens-50k_pairs.tsv"
    path.write_bytes(b"1\t10 20\r\n2\r\n3\t5\r\n")
    with pytest.raises(DataError, match=r"MicroLens-50k_pairs\.tsv: line 2"):
        microlens.load_pairs_tsv(path)


def test_pairs_csv_ms_to_seconds_and_column_names(tmp_path):
    path = tmp_path / "MicroLens-50k_pairs.csv"
    path.write_text("user,item,timestamp\n1,10,1583315294249\n1,20,1583315295000\n")
    df = microlens.load_pairs_csv(path)
    assert df["timestamp"].tolist() == [1583315294, 1583315295]
    path.write_text("userID,videoID,timestamp\n1,10,x\n")
    with pytest.raises(DataError, match=r"pairs\.csv: line 2: field 'timestamp'"):
        microlens.load_pairs_csv(path)
    path.write_text("user,video\n1,10\n")
    with pytest.raises(DataError, match="need columns"):
        microlens.load_pairs_csv(path)


def test_prefers_csv_with_real_timestamps(tmp_path):
    (tmp_path / "MicroLens-50k_pairs.tsv").write_bytes(b"1\t10 20\r\n")
    (tmp_path / "MicroLens-50k_pairs.csv").write_text("user,item,timestamp\n1,20,5\n1,10,9\n")
    (tmp_path / "MicroLens-50k_titles.csv").write_text('item,title\n10,"a, b"\n20,c\n')
    inter, items, unit = microlens.load(tmp_path, tmp_path)
    assert unit == "s" and inter["timestamp"].tolist() == [5, 9]
    assert items["title"].tolist() == ["a, b", "c"] and items["image_path"].isna().all()


def test_cover_found_is_used(tmp_path):
    (tmp_path / "MicroLens-50k_pairs.tsv").write_bytes(b"1\t10\r\n")
    (tmp_path / "MicroLens-50k_titles.csv").write_text("item,title\n10,x\n")
    (tmp_path / "MicroLens-50k_covers").mkdir()
    (tmp_path / "MicroLens-50k_covers" / "10.jpg").write_bytes(b"jpg")
    _, items, unit = microlens.load(tmp_path, tmp_path)
    assert unit == "order"
    assert items["image_path"].tolist() == ["MicroLens-50k_covers/10.jpg"]


def test_real_sample_matches_its_documented_counts():
    inter, items, unit = microlens.load(SAMPLE / "microlens50k", SAMPLE)
    assert (inter["user_id"].nunique(), inter["item_id"].nunique(), len(inter)) == (50_000, 19_220, 359_708)
    assert len(items) == 19_220 and set(inter["item_id"]) <= set(items["item_id"])
    assert not inter["item_id"].str.contains("\r").any()
    first = inter[inter["user_id"] == "1"]["item_id"].tolist()
    assert first == ["1958", "6346", "15223", "17700", "1707"]  # line 1 of pairs.tsv, in order


def test_missing_files_error_lists_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        microlens.load(tmp_path, tmp_path)
