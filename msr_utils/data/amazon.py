"""Amazon Reviews 2023 (McAuley Lab) -> canonical tables, streamed with DuckDB.

Reads `<Category>.jsonl[.gz]` (reviews) and `meta_<Category>.jsonl[.gz]` (items) in their published schema.
DuckDB parses only the columns named below, so a category never exists as Python objects.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from msr_utils.data import schema
from msr_utils.data.schema import DESCRIPTION, IMAGE_PATH, IMAGE_URL, ITEM, TITLE, DataError

# Fields read from each file (everything else in a line is ignored) and their DuckDB types.
REVIEW_FIELDS = {"user_id": "VARCHAR", "parent_asin": "VARCHAR", "timestamp": "BIGINT", "rating": "DOUBLE"}
META_FIELDS = {
    "parent_asin": "VARCHAR",
    "title": "VARCHAR",
    "description": "VARCHAR[]",
    "images": "STRUCT(thumb VARCHAR, large VARCHAR, hi_res VARCHAR, variant VARCHAR)[]",
}
REVIEW_REQUIRED = ("user_id", "parent_asin", "timestamp")
META_REQUIRED = ("parent_asin",)

REVIEWS_SQL = """
SELECT user_id, parent_asin, timestamp // 1000 AS timestamp, rating  -- ms -> s
FROM {source}
"""
# title null -> '' (canonical title is a non-null str); description list -> one string, empty -> NULL;
# image_url = large URL of the first MAIN image, else of the first image, else NULL.
META_SQL = """
SELECT parent_asin,
       coalesce(title, '') AS title,
       nullif(trim(array_to_string(description, ' ')), '') AS description,
       coalesce(list_filter(images, lambda im: im.variant = 'MAIN')[1].large, images[1].large) AS image_url
FROM {source}
"""

# DuckDB 2.0 reports malformed JSON one line past the bad record, transform errors on the record itself;
# both count records (blank lines skipped), so _physical_line maps them back to the file's line.
_MALFORMED = re.compile(r"Malformed JSON in file .*? in line (\d+): (.*)")
_TRANSFORM = re.compile(r"JSON transform error in file .*? in line (\d+): (.*)")


def load_reviews(path: str | Path) -> pd.DataFrame:
    """Reviews file -> interactions (user_id, item_id, timestamp [s], rating [NaN when missing]).

    Raises DataError naming the file and line for malformed JSON, a wrong type, or a missing/null
    user_id, parent_asin or timestamp.
    """
    path = Path(path)
    table = _read(path, REVIEW_FIELDS, REVIEWS_SQL)
    _check_required(path, table, REVIEW_REQUIRED)
    return schema.interactions_frame(table["user_id"], table["parent_asin"], table["timestamp"],
                                     table["rating"])


def load_meta(path: str | Path) -> pd.DataFrame:
    """Meta file -> items (item_id, title, description, image_path, image_url), one row per parent_asin.

    A null title becomes "" (the canonical title is a non-null str); image_path is None (no local file yet).
    A repeated parent_asin keeps its first line. Raises DataError naming file and line for malformed JSON,
    a wrong type, or a missing/null parent_asin.
    """
    path = Path(path)
    table = _read(path, META_FIELDS, META_SQL)
    _check_required(path, table, META_REQUIRED)
    columns = {
        ITEM: table["parent_asin"],
        TITLE: table["title"],
        DESCRIPTION: table["description"],
        IMAGE_PATH: pa.nulls(table.num_rows, pa.string()),
        IMAGE_URL: table["image_url"],
    }
    items = pd.DataFrame({name: pd.Series(values, dtype="str") for name, values in columns.items()})
    return items.drop_duplicates(ITEM, keep="first").reset_index(drop=True)


def _read(path: Path, fields: dict[str, str], sql: str) -> pa.Table:
    """Run `sql` over the jsonl(.gz) file with only `fields` parsed; rows keep file order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in fields.items()) + "}"
    source = f"read_json(?, format = 'newline_delimited', columns = {columns})"
    with duckdb.connect() as con:
        try:
            return con.sql(sql.format(source=source), params=[str(path)]).to_arrow_table()
        except duckdb.Error as err:
            raise _data_error(path, err) from err


def _data_error(path: Path, err: duckdb.Error) -> DataError:
    """DuckDB's JSON error -> DataError naming the file and its 1-based physical line."""
    text = str(err)
    for pattern, offset, what in ((_MALFORMED, 1, "malformed JSON"), (_TRANSFORM, 0, "unexpected value")):
        if match := pattern.search(text):
            line = _physical_line(path, int(match.group(1)) - offset)
            reason = match.group(2).split(". Try")[0].strip(" .")  # drop DuckDB's option hint
            return DataError(f"{path}: line {line}: {what} ({reason})")
    return DataError(f"{path}: cannot read as JSON lines: {text.splitlines()[0]}")


def _check_required(path: Path, table: pa.Table, fields: tuple[str, ...]) -> None:
    """Fail on the first null in each required field, naming file, field and line."""
    for field in fields:
        missing = pc.is_null(table[field])
        count = pc.sum(missing).as_py() or 0
        if count:
            first = pc.index(missing, True).as_py()
            hint = " (is this the Amazon Reviews 2023 schema?)" if count == table.num_rows else ""
            raise DataError(f"{path}: line {_physical_line(path, first + 1)}: required field '{field}' "
                            f"is missing or null in {count} of {table.num_rows} lines{hint}")


def _physical_line(path: Path, record: int) -> int:
    """1-based line number of the `record`-th non-blank line (DuckDB skips blank lines). Error path only."""
    opener = gzip.open if path.suffix == ".gz" else open
    seen = 0
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            seen += bool(line.strip())
            if seen == record:
                return number
    return record
