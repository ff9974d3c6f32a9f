"""Reading the API's answers: the envelope, a page of rows, a window's total. Defensive: a
missing cursor or rows list is an error to retry, never "end of data"."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from d23_pipeline.client.completeness import MAX_COUNT, WindowTotal
from d23_pipeline.client.retry import (
    Transient,
    decode_json,
    request_id_of,
    request_of,
    server_time,
    shown_server_text,
)
from d23_pipeline.schema import (
    RejectedRow,
    RepeatedKeys,
    RepeatedKeysError,
    note_repeated_keys,
    serves_no_rows,
    validate_rows,
)
from d23_pipeline.settings import is_text

if TYPE_CHECKING:
    import pyarrow as pa

# A body naming keys more than once is reported with the first few, each cut: the names are the
# server's text, and 500 keys of 2 KB had made a 1 MB error, logged again on every retry.
_KEYS_NAMED = 5
_KEY_CHARS = 64
# What a count is read from; another key named twice in a count's answer changes nothing.
_COUNT_KEYS = ("total", "totalExact", "totalNote")


@dataclass(frozen=True)
class Page:
    """One page as served: rows as received, the valid ones as Arrow, rejects, the cursor."""

    served_rows: int
    # None: no valid row. pyarrow is loaded for the first page with one, not for empty pages.
    batch: pa.RecordBatch | None
    rejects: list[RejectedRow]
    extra_fields: set[str]
    next_cursor: str | None


def read_page(response: httpx.Response, since: str, until: str) -> Page:
    """The page of a 200 answer for ``[since, until)``, every row validated."""
    # Most pages are clean and not the last: Arrow reads those straight from the bytes. Every
    # other page takes the row-by-row path, which rejects with reasons. That path always looks
    # for repeated keys: Arrow stops at a page's first problem, which may come before one.
    clean = None
    if not serves_no_rows(response.content):
        from d23_pipeline.schema_arrow import read_canonical_page

        with contextlib.suppress(RepeatedKeysError):
            clean = read_canonical_page(response.content, since, until)
    if clean is not None:
        batch, next_cursor = clean
        return Page(batch.num_rows, batch, [], set(), next_cursor)
    raw_rows, cursor = _rows_and_cursor(response)
    result = validate_rows(raw_rows, since, until)
    rows = result.batch
    if rows is None and result.rows:
        from d23_pipeline.schema_arrow import rows_to_batch

        rows = rows_to_batch(result.rows)
    return Page(len(raw_rows), rows, result.rejects, result.extra_fields, cursor)


def read_total(response: httpx.Response) -> WindowTotal:
    """``pagination.total`` of a 200 answer to an ``includeTotal`` request."""
    # A count missing or of the wrong type is a broken answer, not "the API could not count"
    # (`total: null`): read as the latter, it would narrow the window to its minimum looking for
    # an exact count, and then fail the month's proof.
    body = _envelope_body(response)
    _refuse_repeated_keys(response, "body", body, ("pagination",))
    pagination = body.get("pagination")
    if not isinstance(pagination, dict):
        raise _bad_body(response, "no body.pagination object in the answer to includeTotal")
    _refuse_repeated_keys(response, "body.pagination", pagination, _COUNT_KEYS)
    if "total" not in pagination:
        raise _bad_body(response, "no pagination.total in the answer to includeTotal")
    total = pagination["total"]
    exact = pagination.get("totalExact")
    note = pagination.get("totalNote")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
        wrong = f"pagination.total is {_json_type(total)}, expected an integer"
        raise _bad_body(response, wrong)
    if total is not None and not 0 <= total <= MAX_COUNT:
        raise _bad_body(response, f"pagination.total is {total}, not a count of rows")
    if total is not None and exact is None:  # only a count of null may come without it
        raise _bad_body(response, "pagination.totalExact is missing or null beside a count")
    if exact is not None and not isinstance(exact, bool):
        wrong = f"pagination.totalExact is {_json_type(exact)}, expected true or false"
        raise _bad_body(response, wrong)
    note = note if isinstance(note, str) else None
    return WindowTotal(total, exact is True, note, server_time(response))


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _envelope_body(response: httpx.Response) -> dict[str, Any]:
    # Every object is decoded noting repeated keys: a parser keeps a key's last value, so an
    # answer naming "body" twice would lose the first body's rows (bad ones unquarantined) and a
    # count naming "total" twice would be read as its last, unseen.
    envelope = decode_json(response, note_repeated_keys)
    _refuse_repeated_keys(response, "the answer", envelope, ("body",))
    body = envelope.get("body") if isinstance(envelope, dict) else None
    if not isinstance(body, dict):
        raise _bad_body(response, "no body object in the envelope")
    return body


def _refuse_repeated_keys(
    response: httpx.Response, name: str, part: object, keys: Collection[str] | None = None
) -> None:
    """A ``bad_body`` if ``part`` names any of ``keys`` (any key, if None) more than once."""
    if not isinstance(part, RepeatedKeys):
        return
    repeated = sorted(part.repeated if keys is None else part.repeated & set(keys))
    if not repeated:
        return
    names = ", ".join(ascii(k)[:_KEY_CHARS] for k in repeated[:_KEYS_NAMED])
    more = f" and {len(repeated) - _KEYS_NAMED} more" * (len(repeated) > _KEYS_NAMED)
    shown = shown_server_text(names, request_of(response), _KEYS_NAMED * (_KEY_CHARS + 2))
    raise _bad_body(response, f"{name} names {shown}{more} more than once")


def _bad_body(response: httpx.Response, detail: str) -> Transient:
    return Transient(
        "bad_body", status=response.status_code, request_id=request_id_of(response), detail=detail
    )


def _rows_and_cursor(response: httpx.Response) -> tuple[list[Any], str | None]:
    body = _envelope_body(response)
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise _bad_body(response, "no body.rows list")
    pagination = body.get("pagination")
    if not isinstance(pagination, dict) or "nextCursor" not in pagination:
        # A missing cursor must not be read as "no more pages": that would truncate silently.
        raise _bad_body(response, "no body.pagination.nextCursor")
    # Which rows, or which cursor, is unknown.
    _refuse_repeated_keys(response, "body", body)
    _refuse_repeated_keys(response, "body.pagination", pagination)
    cursor = pagination["nextCursor"]
    if cursor is not None and not (isinstance(cursor, str) and cursor):
        raise _bad_body(response, "nextCursor is neither a cursor string nor null")
    if cursor is not None and not is_text(cursor):
        raise _bad_body(response, "nextCursor is not valid UTF-8 text")
    return rows, cursor
