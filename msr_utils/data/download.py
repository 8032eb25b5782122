"""Opt-in downloads of the raw datasets from their official URLs; safe to kill and rerun.

Dataset files: pooch streams each one to a temporary name in `dest_dir`, then renames it, so the final
name only ever holds a complete file; `dest_dir/checksums.json` records each file's sha256 on first
download and later runs verify it. Images: `fetch_images` never raises for one bad URL, it records it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pooch
import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from msr_utils.data.schema import ITEM, DataError

AMAZON_2023 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw"
MICROLENS = "https://recsys.westlake.edu.cn/MicroLens-50k-Dataset"
MICROLENS_COVER_URL = MICROLENS + "/MicroLens-50k_covers/{item}.jpg"  # one cover per item id


def _amazon(category: str) -> dict[str, str]:
    return {
        f"{category}.jsonl.gz": f"{AMAZON_2023}/review_categories/{category}.jsonl.gz",
        f"meta_{category}.jsonl.gz": f"{AMAZON_2023}/meta_categories/meta_{category}.jsonl.gz",
    }


# dataset name -> {local file name: official URL}. Per-item images are not listed here: MicroLens covers
# come from MICROLENS_COVER_URL (see cover_urls), Amazon image URLs from the meta file (amazon.load_meta).
SOURCES: dict[str, dict[str, str]] = {
    "microlens50k": {
        name: f"{MICROLENS}/{name}"
        for name in ("MicroLens-50k_pairs.tsv", "MicroLens-50k_pairs.csv", "MicroLens-50k_titles.csv")
    },
    "amazon_baby": _amazon("Baby_Products"),
    "amazon_games": _amazon("Video_Games"),
}
CHECKSUMS = "checksums.json"
FAILURES = "failures.csv"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


class DownloadError(RuntimeError):
    """A file could not be downloaded after all retries."""


def fetch_dataset(name: str, dest_dir: str | Path, retries: int = 3, timeout: float = 60.0) -> dict[str, str]:
    """Download every file of SOURCES[name] into dest_dir; returns {file name: sha256}."""
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
    return fetch_files(SOURCES[name], dest_dir, retries=retries, timeout=timeout)


def fetch_files(files: dict[str, str], dest_dir: str | Path, retries: int = 3,
                timeout: float = 60.0) -> dict[str, str]:
    """Download {file name: url} into dest_dir, skipping files whose sha256 matches checksums.json.

    A present file with no recorded hash is trusted and recorded; a present file whose hash differs
    from the recorded one raises DataError (delete it to download again). Only missing files are fetched.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    recorded = _read_checksums(dest)
    for name, url in files.items():
        target = dest / name
        if target.exists():
            digest = pooch.file_hash(str(target))
            if name in recorded and digest != recorded[name]:
                raise DataError(f"{target}: sha256 {digest} differs from {recorded[name]} recorded in "
                                f"{dest / CHECKSUMS}; delete the file to download it again")
        else:
            digest = _download(url, target, recorded.get(name), retries, timeout)
        recorded[name] = digest
        _write_checksums(dest, recorded)  # after each file, so a killed run keeps what it finished
    return {name: recorded[name] for name in files}


def _download(url: str, target: Path, known_hash: str | None, retries: int, timeout: float) -> str:
    """Fetch url to target via a temp file + rename (pooch); verify known_hash when given."""
    store = pooch.create(path=target.parent, base_url="", registry={target.name: known_hash},
                         urls={target.name: url}, retry_if_failed=retries)
    downloader = pooch.HTTPDownloader(progressbar=True, timeout=timeout, chunk_size=1 << 20)
    try:
        store.fetch(target.name, downloader=downloader)
    except ValueError as err:  # pooch: the downloaded file's hash differs from known_hash
        raise DataError(f"{target}: downloaded from {url} but its sha256 differs from the one recorded in "
                        f"{target.parent / CHECKSUMS} ({err})") from err
    except requests.RequestException as err:
        raise DownloadError(f"{target.name}: download from {url} failed after {retries + 1} attempt(s): "
                            f"{err}") from err
    return pooch.file_hash(str(target))


def _read_checksums(dest: Path) -> dict[str, str]:
    path = dest / CHECKSUMS
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from err


def _write_checksums(dest: Path, recorded: dict[str, str]) -> None:
    tmp = dest / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, dest / CHECKSUMS)


def cover_urls(item_ids) -> dict[str, str]:
    """MicroLens item ids -> official cover URLs, ready for fetch_images."""
    return {str(item): MICROLENS_COVER_URL.format(item=item) for item in item_ids}


def fetch_images(urls: dict[str, str], dest_dir: str | Path, retries: int = 3, timeout: float = 20.0,
                 workers: int = 8) -> pd.DataFrame:
    """Download {item_id: url} to dest_dir/<item_id><ext>; never raises for a failed image.

    Existing files are skipped (a file only gets its final name once complete). Returns one row per
    item, in input order: item_id, path (str, NaN on failure), ok (bool), error (str, NaN when ok);
    failures are also written to dest_dir/failures.csv (item_id, url, error), replaced on every run.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    local, sessions = threading.local(), []

    def session() -> requests.Session:  # one per thread: Session is not thread-safe
        if not hasattr(local, "session"):
            retry = Retry(total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504))
            local.session = requests.Session()
            local.session.mount("http://", HTTPAdapter(max_retries=retry))
            local.session.mount("https://", HTTPAdapter(max_retries=retry))
            sessions.append(local.session)
        return local.session

    def fetch(item: tuple[str, str]) -> tuple[str, str | None, bool, str | None]:
        item_id, url = item
        try:
            target = dest / _image_name(item_id, url)
            if not target.exists():
                response = session().get(url, timeout=timeout)
                response.raise_for_status()
                if not response.content:
                    raise ValueError("empty response body")
                part = target.with_name(target.name + ".part")
                part.write_bytes(response.content)
                os.replace(part, target)
            return item_id, str(target), True, None
        except (requests.RequestException, ValueError, OSError) as err:
            return item_id, None, False, f"{type(err).__name__}: {err}"

    items = [(str(item_id), url) for item_id, url in urls.items()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(tqdm(pool.map(fetch, items), total=len(items), desc="images", unit="img"))
    for s in sessions:
        s.close()
    result = pd.DataFrame(rows, columns=[ITEM, "path", "ok", "error"]).astype(
        {ITEM: "str", "path": "str", "ok": "bool", "error": "str"})
    failed = result.loc[~result["ok"], [ITEM, "error"]]
    failed.insert(1, "url", failed[ITEM].map(dict(items)))
    tmp = dest / (FAILURES + ".tmp")
    failed.to_csv(tmp, index=False)
    os.replace(tmp, dest / FAILURES)
    return result


def _image_name(item_id: str, url: str) -> str:
    """<item_id><ext>, ext from the URL path (default .jpg); refuses ids that could escape dest_dir."""
    if not re.fullmatch(r"[\w.-]+", item_id) or item_id.startswith("."):
        raise ValueError(f"unsafe item id for a file name: {item_id!r}")
    suffix = Path(urlparse(url).path).suffix.lower()
    return item_id + (suffix if suffix in IMAGE_SUFFIXES else ".jpg")
