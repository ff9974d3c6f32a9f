"""The D23 contract in Arrow: the raw snapshot's file schemas, and the columnar reading and
checking of a clean page (the row contract itself is :mod:`d23_pipeline.schema`).

pyarrow (with numpy, ~50 MB of a run) is loaded only where rows or rejects are at hand: the
pipeline imports this module, and pyarrow, inside the functions that handle them, so a month that
serves none lands and merges without it (benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from d23_pipeline.schema import (
    BOOL_FIELDS,
    D23_FIELDS,
    MAX_TEXT_LENGTH,
    STRING_FIELDS,
    TIMESTAMP_FIELDS,
    RepeatedKeysError,
)
from d23_pipeline.settings import PAGE_LIMIT_RANGE

ARROW_SCHEMA = pa.schema(
    [(name, pa.bool_() if name in BOOL_FIELDS else pa.string()) for name in D23_FIELDS]
)
_ARROW_ROW = pa.struct(list(ARROW_SCHEMA))
_ARROW_TS = pa.timestamp("ms", tz="UTC")
# RE2 (Arrow's engine) is stricter than `re` here (ASCII digits, `$` only at the very end), so a
# value this rejects merely sends the page to the row-by-row check.
# Year 0000 is excluded: datetime's range starts at 0001, Arrow's does not.
_CANONICAL_TS_RE2 = (
    r"^(?:[1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
)
# An id of printable ASCII with at least one character that is not a space.
_PLAIN_ID_RE2 = r"^[ -~]*[!-~][ -~]*$"

# The part of a page envelope the columnar reader needs; the rest is inferred and ignored.
_PAGE_SCHEMA = pa.schema(
    [
        (
            "body",
            pa.struct(
                [
                    ("rows", pa.list_(_ARROW_ROW)),
                    ("pagination", pa.struct([("nextCursor", pa.string())])),
                ]
            ),
        )
    ]
)
_PAGE_PARSE = pj.ParseOptions(explicit_schema=_PAGE_SCHEMA, unexpected_field_behavior="infer")
# The most brackets a page of plain rows holds: one object per row (PAGE_LIMIT_RANGE), the
# envelope's three and the rows list, with room for ids that hold a bracket.
_MAX_PLAIN_PAGE_BRACKETS = PAGE_LIMIT_RANGE[1] + 64
_ALL_BUT_BRACKETS = bytes(set(range(256)) - set(b"[{"))

# The raw snapshot's other files (d23_pipeline/landing/snapshot.py): a slice's quarantined rows,
# the rows a read proved gone, and those it found gone but could not prove.
REJECT_SCHEMA = pa.schema(
    [
        ("slice_since", pa.timestamp("ms", tz="UTC")),
        ("slice_until", pa.timestamp("ms", tz="UTC")),
        ("public_id", pa.string()),
        ("reason", pa.string()),
        ("allowlisted_values", pa.string()),
    ]
)
ABSENT_SCHEMA = pa.schema([("public_id", pa.string())])
UNPROVEN_SCHEMA = pa.schema([("public_id", pa.string()), ("reason", pa.string())])


def _is_canonical(batch: pa.RecordBatch, since: str, until: str) -> bool:
    """Whether every row of a nine-field batch is a canonical contract row inside the window."""
    if not batch.num_rows or any(column.null_count for column in batch.columns):
        return False
    try:
        # Arrow's JSON reader passes bytes that are not UTF-8 through; Parquet and DuckDB don't.
        batch.validate(full=True)
    except pa.ArrowInvalid:
        return False
    # Ids of printable ASCII and not blank, every text within its length: anything else
    # (a non-ASCII id included) is for the row-by-row rules to decide. Columns of one kind are
    # checked together: each kernel call hands the GIL to the other reader threads and back.
    texts = pa.concat_arrays([batch.column(name) for name in STRING_FIELDS])
    if (
        not pc.all(pc.match_substring_regex(batch.column("public_id"), _PLAIN_ID_RE2)).as_py()
        or pc.max(pc.binary_length(texts)).as_py() > MAX_TEXT_LENGTH
    ):
        return False
    stamps = pa.concat_arrays([batch.column(name) for name in TIMESTAMP_FIELDS])
    if not pc.all(pc.match_substring_regex(stamps, _CANONICAL_TS_RE2)).as_py():
        return False
    try:
        stamps.cast(_ARROW_TS)  # raises on impossible dates and times (Feb 30, 24:00)
    except pa.ArrowInvalid:
        return False
    # Canonical strings of one fixed width compare in time order.
    low, high = (v.as_py() for v in pc.min_max(batch.column("communicated_at")).values())
    return bool(since <= low <= high < until)


def rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Contract rows (exactly the nine fields) as an Arrow batch of :data:`ARROW_SCHEMA`."""
    return pa.RecordBatch.from_struct_array(pa.array(rows, type=_ARROW_ROW))


def canonical_batch(
    raw_rows: list[dict[str, Any]], since: str, until: str
) -> pa.RecordBatch | None:
    """Rows of exactly the nine fields, in order, as Arrow if every one is a canonical contract
    row inside ``[since, until)``, else None.

    Arrow checks types, nulls and timestamps a column at a time, so a clean page costs no
    per-field Python work; anything unusual gets None and the row-by-row check decides.
    """
    try:
        batch = rows_to_batch(raw_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):  # the last: a surrogate
        return None
    return batch if _is_canonical(batch, since, until) else None


def read_canonical_page(
    content: bytes, since: str, until: str
) -> tuple[pa.RecordBatch, str] | None:
    """A page's rows as Arrow and its ``nextCursor``, parsed by Arrow's C++ JSON reader.

    Only for the common page: every row exactly the nine contract fields, canonical and inside
    ``[since, until)``, and a further page to come. Anything else (a reject, an extra field, an
    empty or last page, a malformed body) gives None, and the caller decodes the page row by row,
    which decides and explains. No Python object is made per row, and the parse runs without
    the GIL, so concurrent slices really overlap. A page naming some key twice in one object
    raises :class:`RepeatedKeysError`: the usual decoder would keep the last value unseen.
    """
    # Arrow's reader recurses once per level of nesting and overflows its stack (a segfault, not
    # an exception) some 9,000 levels down: a body with more brackets than a page of plain rows
    # is the strict parser's, which refuses one nested past its depth.
    if len(content.translate(None, _ALL_BUT_BRACKETS)) > _MAX_PLAIN_PAGE_BRACKETS:
        return None
    try:
        table = pj.read_json(
            pa.BufferReader(content),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(content) + 1),
            parse_options=_PAGE_PARSE,
        )
    except pa.ArrowInvalid as exc:
        if "was specified twice" in str(exc):
            raise RepeatedKeysError(str(exc)) from None
        return None
    except pa.ArrowTypeError:
        return None
    if table.num_rows != 1:
        return None
    body = table.column("body").combine_chunks()
    rows = body.field("rows")
    try:
        cursor = body.field("pagination").field("nextCursor")[0].as_py()
    except UnicodeDecodeError:  # not UTF-8: the strict parser says so
        return None
    if rows.null_count or not cursor:
        return None
    flat = rows.flatten()
    if flat.type != _ARROW_ROW:  # an extra field was inferred into the rows
        return None
    batch = pa.RecordBatch.from_struct_array(flat)
    return (batch, cursor) if _is_canonical(batch, since, until) else None
