"""Downloads against a local http.server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from msr_utils.data import download
from msr_utils.data.schema import DataError

REVIEWS = b'{"rating": 5.0, "parent_asin": "B0BBM75S58", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923}\n'
META = b'{"title": "Muslin Swaddle Blanket", "parent_asin": "B0BBM75S58", "images": []}\n'
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


class Handler(SimpleHTTPRequestHandler):
    """Serves server.root; logs each GET path; for paths in server.truncate sends half the body, then hangs up."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in self.server.truncate:
            return super().do_GET()
        body = self.translate_path(self.path)
        data = open(body, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):  # a proxy from the environment must not see these requests
        monkeypatch.setenv(var, "127.0.0.1")
    root = tmp_path / "remote"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.root, httpd.requests, httpd.truncate = root, [], set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def publish(server, files: dict[str, bytes]) -> dict[str, str]:
    """Put files on the server; returns {name: url}."""
    for name, data in files.items():
        (server.root / name).write_bytes(data)
    return {name: f"{server.url}/{name}" for name in files}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sources_are_the_official_urls():
    assert download.SOURCES["amazon_baby"]["Baby_Products.jsonl.gz"] == (
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/review_categories/Baby_Products.jsonl.gz")
    assert download.SOURCES["amazon_games"]["meta_Video_Games.jsonl.gz"] == (
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/meta_categories/meta_Video_Games.jsonl.gz")
    assert sorted(download.SOURCES["microlens50k"]) == [
        "MicroLens-50k_pairs.csv", "MicroLens-50k_pairs.tsv", "MicroLens-50k_titles.csv"]
    assert download.cover_urls([19220]) == {
        "19220": "https://recsys.westlake.edu.cn/MicroLens-50k-Dataset/MicroLens-50k_covers/19220.jpg"}


def test_first_download_records_checksums_and_rerun_skips(server, tmp_path):
    urls = publish(server, {"Baby_Products.jsonl.gz": REVIEWS, "meta_Baby_Products.jsonl.gz": META})
    dest = tmp_path / "raw"
    expected = {"Baby_Products.jsonl.gz": sha(REVIEWS), "meta_Baby_Products.jsonl.gz": sha(META)}
    assert download.fetch_files(urls, dest, retries=0) == expected
    assert json.loads((dest / "checksums.json").read_text()) == expected
    assert (dest / "Baby_Products.jsonl.gz").read_bytes() == REVIEWS
    assert sorted(server.requests) == ["/Baby_Products.jsonl.gz", "/meta_Baby_Products.jsonl.gz"]

    server.requests.clear()
    assert download.fetch_files(urls, dest, retries=0) == expected
    assert server.requests == []  # nothing downloaded again

    (dest / "meta_Baby_Products.jsonl.gz").unlink()
    assert download.fetch_files(urls, dest, retries=0) == expected
    assert server.requests == ["/meta_Baby_Products.jsonl.gz"]  # only the missing file


def test_changed_file_on_disk_fails_naming_it(server, tmp_path):
    urls = publish(server, {"Baby_Products.jsonl.gz": REVIEWS})
    dest = tmp_path / "raw"
    download.fetch_files(urls, dest, retries=0)
    (dest / "Baby_Products.jsonl.gz").write_bytes(REVIEWS + b"tampered\n")
    server.requests.clear()
    with pytest.raises(DataError, match=r"Baby_Products\.jsonl\.gz: sha256 .* differs"):
        download.fetch_files(urls, dest, retries=0)
    assert server.requests == []


def test_changed_remote_file_fails_and_leaves_nothing(server, tmp_path):
    urls = publish(server, {"Baby_Products.jsonl.gz": REVIEWS})
    dest = tmp_path / "raw"
    download.fetch_files(urls, dest, retries=0)
    (dest / "Baby_Products.jsonl.gz").unlink()
    publish(server, {"Baby_Products.jsonl.gz": REVIEWS + REVIEWS})  # upstream changed since we recorded it
    with pytest.raises(DataError, match=r"Baby_Products\.jsonl\.gz: downloaded .* sha256 differs"):
        download.fetch_files(urls, dest, retries=0)
    assert sorted(p.name for p in dest.iterdir()) == ["checksums.json"]


def test_partial_download_never_takes_the_final_name(server, tmp_path):
    urls = publish(server, {"Baby_Products.jsonl.gz": REVIEWS * 100})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "tmp1a2b3c4d").write_bytes(REVIEWS[:10])  # what a killed earlier run leaves behind
    server.truncate.add("/Baby_Products.jsonl.gz")
    with pytest.raises(download.DownloadError, match=r"Baby_Products\.jsonl\.gz"):
        download.fetch_files(urls, dest, retries=0)
    assert not (dest / "Baby_Products.jsonl.gz").exists()
    assert not (dest / "checksums.json").exists()

    server.truncate.clear()
    assert download.fetch_files(urls, dest, retries=0) == {"Baby_Products.jsonl.gz": sha(REVIEWS * 100)}
    assert (dest / "Baby_Products.jsonl.gz").read_bytes() == REVIEWS * 100


def test_fetch_dataset_reads_sources(server, tmp_path, monkeypatch):
    urls = publish(server, {"MicroLens-50k_pairs.tsv": b"0\t1 2 3\r\n"})
    monkeypatch.setitem(download.SOURCES, "microlens50k", urls)
    assert download.fetch_dataset("microlens50k", tmp_path) == {"MicroLens-50k_pairs.tsv": sha(b"0\t1 2 3\r\n")}
    with pytest.raises(KeyError, match="amazon_baby"):
        download.fetch_dataset("amazon_toys", tmp_path)


def test_fetch_images_records_failures_without_raising(server, tmp_path):
    urls = publish(server, {"51m.jpg": JPEG, "31b.png": JPEG})
    urls = {"B0BBM75S58": urls["51m.jpg"], "B0BHS9NNGD": urls["31b.png"],
            "B0C5RMSPWM": f"{server.url}/missing.jpg", "B09RZR1DNF": "http://127.0.0.1:9/refused.jpg"}
    dest = tmp_path / "images"
    result = download.fetch_images(urls, dest, retries=0, timeout=5, workers=2)
    assert result["item_id"].tolist() == list(urls)
    assert result["ok"].tolist() == [True, True, False, False]
    assert result["path"].iloc[:2].tolist() == [str(dest / "B0BBM75S58.jpg"), str(dest / "B0BHS9NNGD.png")]
    assert (dest / "B0BBM75S58.jpg").read_bytes() == JPEG
    assert "404" in result["error"].iloc[2] and result["path"].iloc[2:].isna().all()
    failures = pd.read_csv(dest / "failures.csv")
    assert failures["item_id"].tolist() == ["B0C5RMSPWM", "B09RZR1DNF"]
    assert failures["url"].iloc[0] == urls["B0C5RMSPWM"]

    server.requests.clear()
    publish(server, {"missing.jpg": JPEG})
    again = download.fetch_images(urls, dest, retries=0, timeout=5, workers=2)
    assert server.requests == ["/missing.jpg"]  # existing images skipped
    assert again["ok"].tolist() == [True, True, True, False]
    assert pd.read_csv(dest / "failures.csv")["item_id"].tolist() == ["B09RZR1DNF"]
    assert not list(dest.glob("*.part"))
