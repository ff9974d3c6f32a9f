"""validate_rows decides the same way for a whole clean page as row by row.

A page whose rows are all canonical takes a columnar (Arrow) check; one odd value anywhere must
send the page back to the row-by-row rules, so each row gets exactly the verdict it would get
alone.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from harness import d23_row

from d23_pipeline.client.pages import Page, read_page
from d23_pipeline.client.retry import Transient
from d23_pipeline.schema import D23_FIELDS, note_repeated_keys, serves_no_rows, validate_rows
from d23_pipeline.schema_arrow import read_canonical_page
from d23_pipeline.settings import PAGE_LIMIT_RANGE

SINCE, UNTIL = "2026-03-01T00:00:00.000Z", "2026-04-01T00:00:00.000Z"


def row(n: int, **changes: Any) -> dict[str, Any]:
    base = d23_row(
        f"{n:024x}",
        f"2026-03-{1 + n % 28:02d}T10:00:00.{n % 1000:03d}Z",
        is_ptp_broken=n % 2 == 0,
        created_at="2026-03-01T09:00:00.000Z",
        updated_at="2026-03-02T09:00:00.000Z",
    )
    return base | changes


def test_a_rejected_row_keeps_only_the_allowlisted_fields() -> None:
    bad = row(1, updated_at="yesterday") | {"phone": "+1-555-0100", "notes": "PII-NOTE"}

    (reject,) = validate_rows([bad], SINCE, UNTIL).rejects

    assert set(reject.values) == set(D23_FIELDS)
    assert "PII-NOTE" not in str(reject) and "555-0100" not in str(reject)


def test_clean_page_keeps_every_row_and_matches_its_arrow_batch() -> None:
    rows = [row(n) for n in range(50)]
    result = validate_rows(rows, SINCE, UNTIL)
    assert result.rejects == [] and result.extra_fields == set()
    assert result.rows == [row(n) for n in range(50)]
    assert all(tuple(r) == D23_FIELDS for r in result.rows)
    assert result.batch is not None
    assert result.batch.to_pylist() == result.rows


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"created_at": "2026-02-30T00:00:00.000Z"}, "created_at is not an ISO-8601"),
        ({"updated_at": "2026-03-01T24:00:00.000Z"}, "updated_at is not an ISO-8601"),
        ({"updated_at": "2026-03-01T23:59:60.000Z"}, "updated_at is not an ISO-8601"),
        ({"created_at": "0000-03-01T00:00:00.000Z"}, "created_at is not an ISO-8601"),
        ({"communicated_at": "2026-04-01T00:00:00.000Z"}, "outside the requested window"),
        ({"communicated_at": "2026-02-28T23:59:59.999Z"}, "outside the requested window"),
        ({"public_id": ""}, "public_id is an empty string"),
        ({"public_id": None}, "public_id is NoneType"),
        # A blank id collapsed two rows into one key; control characters and unbounded texts
        # are no D23 id or code (a 1 MB code broke the month's chart).
        ({"public_id": " "}, "public_id is only whitespace"),
        ({"public_id": "\u3000\t"}, "public_id is only whitespace"),
        ({"public_id": "id\nforged"}, "public_id holds a control character"),
        ({"public_id": "id\x00"}, "public_id holds a control character"),
        ({"public_id": "x" * 257}, "public_id is longer than the 256 characters allowed"),
        ({"outcome_option": "é" * 257}, "outcome_option is longer than the 256 characters"),
        ({"communication_type": "C" * 1_000_000}, "communication_type is longer than the 256"),
        ({"is_active": 1}, "is_active is int"),
        ({"is_ptp_broken": "false"}, "is_ptp_broken is str"),
        ({"outcome_option": 7}, "outcome_option is int"),
        ({"created_at": 1772300000000}, "created_at is int"),
    ],
)
def test_one_bad_value_is_rejected_and_the_rest_of_the_page_kept(
    changes: dict[str, Any], reason: str
) -> None:
    rows = [row(n) for n in range(20)]
    rows[7] = row(7, **changes)
    result = validate_rows(rows, SINCE, UNTIL)
    assert [r["public_id"] for r in result.rows] == [f"{n:024x}" for n in range(20) if n != 7]
    assert len(result.rejects) == 1 and reason in result.rejects[0].reason
    assert result.batch is None


def test_texts_at_the_limit_and_ids_of_any_printable_characters_are_kept() -> None:
    odd_ids = ["x" * 256, " padded ", "ünïcode-id", "a-b_c:d/e"]
    rows = [row(n, public_id=odd) for n, odd in enumerate(odd_ids)]
    rows.append(row(9, outcome_option="ö" * 256))
    result = validate_rows(rows, SINCE, UNTIL)
    assert result.rejects == []
    assert [r["public_id"] for r in result.rows] == [*odd_ids, f"{9:024x}"]
    # Printable ASCII within the limit takes the columnar path, to the rows the row-by-row
    # rules keep (a row that is not an object forces those rules on the rest of its page).
    ascii_rows = [
        row(1, public_id="x" * 256),
        row(2, public_id=" a b "),
        row(3, outcome_option="O" * 256),
    ]
    read = read_canonical_page(envelope(ascii_rows), SINCE, UNTIL)
    by_row = validate_rows([*ascii_rows, "not a row"], SINCE, UNTIL)
    assert by_row.batch is None and len(by_row.rejects) == 1
    assert read is not None and read[0].to_pylist() == by_row.rows


def test_a_rejected_text_past_the_limit_is_kept_cut_with_its_length() -> None:
    rows = [row(1, outcome_option="N" * 5000, public_id="p" * 300)]
    (reject,) = validate_rows(rows, SINCE, UNTIL).rejects
    assert reject.public_id is None  # no good row can have it
    assert reject.values["outcome_option"] == "N" * 256 + "... (5,000 characters)"
    assert reject.values["public_id"] == "p" * 256 + "... (300 characters)"


def test_non_canonical_timestamps_and_extra_fields_still_come_out_canonical() -> None:
    rows = [row(n) for n in range(5)]
    rows[1] = row(1, created_at="2026-03-01T11:00:00+02:00")
    rows[2] = {**row(2), "notes": "PII-NOTE call me"}
    rows[3] = {name: row(3)[name] for name in reversed(D23_FIELDS)}
    rows[4] = row(4, created_at="0999-01-01T00:00:00+01:00")  # a year of three digits in UTC
    result = validate_rows(rows, SINCE, UNTIL)
    assert result.rejects == [] and result.extra_fields == {"notes"}
    assert result.rows[1]["created_at"] == "2026-03-01T09:00:00.000Z"
    assert result.rows[4]["created_at"] == "0998-12-31T23:00:00.000Z"
    assert all(tuple(r) == D23_FIELDS for r in result.rows)
    assert [r["public_id"] for r in result.rows] == [f"{n:024x}" for n in range(5)]


def envelope(rows: list[Any], cursor: str | None = "next") -> bytes:
    return orjson.dumps(
        {
            "code": 200,
            "message": "success",
            "errors": [],
            "body": {"rows": rows, "pagination": {"nextCursor": cursor, "limit": 500}},
        }
    )


def test_clean_page_read_from_bytes_equals_the_row_by_row_result() -> None:
    rows = [row(n) for n in range(50)]

    read = read_canonical_page(envelope(rows), SINCE, UNTIL)

    assert read is not None
    batch, cursor = read
    assert cursor == "next"
    assert batch.to_pylist() == validate_rows(rows, SINCE, UNTIL).rows


@pytest.mark.parametrize(
    ("rows", "cursor"),
    [
        ([row(n) for n in range(5)], None),  # the last page: its end must be read strictly
        ([], "next"),  # an empty page
        ([row(1), row(2, is_active="yes")], "next"),  # a wrong type
        ([row(1), row(2, public_id=7)], "next"),
        ([row(1), {k: v for k, v in row(2).items() if k != "outcome_option"}], "next"),
        ([row(1), row(2, notes="call back at +44 20 7946 0000")], "next"),  # an extra field
        ([row(1, notes="a"), row(2, notes="b")], "next"),  # a field the API added to all rows
        ([row(1), row(2, updated_at="yesterday")], "next"),
        ([row(1), row(2, communicated_at="2026-04-01T00:00:00.000Z")], "next"),  # outside
        ([row(1), 5], "next"),
        ([row(1), row(2, public_id="  ")], "next"),
        ([row(1), row(2, public_id="")], "next"),
        ([row(1), row(2, public_id="ünïcode-id")], "next"),  # valid, but for the row rules
        ([row(1), row(2, public_id="a\tb")], "next"),
        ([row(1), row(2, public_id="x" * 257)], "next"),
        ([row(1), row(2, interaction_source="A" * 257)], "next"),
    ],
)
def test_any_page_that_is_not_plainly_clean_goes_to_the_row_by_row_rules(
    rows: list[Any], cursor: str | None
) -> None:
    assert read_canonical_page(envelope(rows, cursor), SINCE, UNTIL) is None


@pytest.mark.parametrize("content", [b"<html>504 Gateway Time-out</html>", b'{"body": {}}', b""])
def test_malformed_bodies_are_left_to_the_strict_parser(content: bytes) -> None:
    assert read_canonical_page(content, SINCE, UNTIL) is None


def _read(content: bytes) -> Page:
    request = httpx.Request("GET", "http://127.0.0.1/d23")
    return read_page(httpx.Response(200, content=content, request=request), SINCE, UNTIL)


@pytest.mark.parametrize(
    "stamp",
    ["2026-03-05 10:00:00+00:00", "2026-03-05t10:00Z", "20260305T100000Z", "2026-W10-4T10:00Z"],
)
def test_other_iso_8601_forms_of_a_time_are_kept_in_the_canonical_form(stamp: str) -> None:
    page = _read(envelope([row(1), row(2, updated_at=stamp)]))

    assert page.rejects == [] and page.batch.num_rows == 2
    assert page.batch.column("updated_at")[1].as_py() == "2026-03-05T10:00:00.000Z"


@pytest.mark.parametrize(
    "content",
    [b'{"body": {"rows": [], "pagination": {"nextCursor": null}}}', b'{"body":{"rows" :[\n]}}'],
    ids=["empty", "spaced-no-cursor"],
)
def test_a_page_saying_it_has_no_rows_is_read_whole_by_the_strict_parser(content: bytes) -> None:
    # Not Arrow's to read (so pyarrow is not loaded for it): a missing cursor is still an error.
    assert serves_no_rows(content)
    if b"nextCursor" in content:
        page = _read(content)
        assert (page.batch, page.rejects, page.next_cursor) == (None, [], None)
    else:
        with pytest.raises(Transient) as raised:
            _read(content)
        assert raised.value.detail == "no body.pagination.nextCursor"


def test_rows_beside_an_empty_list_named_rows_elsewhere_all_land() -> None:
    # The strict parser's page, then: a meta key of that name only costs the columnar read.
    rows = [row(n) for n in range(20)]
    content = envelope(rows).replace(b'"errors":[]', b'"errors":[],"meta":{"rows":[]}')
    assert serves_no_rows(content)

    page = _read(content)

    assert page.rejects == [] and page.batch is not None
    assert page.batch.to_pylist() == validate_rows(rows, SINCE, UNTIL).rows


def test_a_full_page_of_the_largest_limit_is_still_read_by_arrow() -> None:
    rows = [row(n) for n in range(PAGE_LIMIT_RANGE[1])]

    assert read_canonical_page(envelope(rows), SINCE, UNTIL) is not None


def test_a_page_just_past_the_bracket_limit_lands_whole_through_the_strict_parser() -> None:
    # Printable ids may hold brackets: enough of them and the page is not Arrow's, yet lands.
    rows = [row(n, public_id=f"id[{n}]" if n < 60 else f"{n:024x}") for n in range(1_000)]
    content = envelope(rows)
    assert content.count(b"[") + content.count(b"{") == PAGE_LIMIT_RANGE[1] + 65

    assert read_canonical_page(content, SINCE, UNTIL) is None
    page = _read(content)
    assert page.rejects == [] and page.batch.num_rows == 1_000
    assert page.batch.column("public_id")[59].as_py() == "id[59]"


@pytest.mark.parametrize("cursor", ["next", None])
@pytest.mark.parametrize(
    "oddity",
    [
        # Arrow's reader overflowed its stack on this (a segfault: the run's process died).
        b"[" * 20_000 + b"]" * 20_000,
        b"[" * 1_500 + b"]" * 1_500,  # deeper than Python's parser goes: not read either way
    ],
    ids=["nested-20000-deep", "nested-1500-deep"],
)
def test_a_body_nested_deeper_than_any_page_is_a_bad_body_whichever_page_it_is(
    oddity: bytes, cursor: str | None
) -> None:
    content = envelope([row(n) for n in range(3)], cursor).replace(
        b"{", b'{"x":' + oddity + b",", 1
    )

    with pytest.raises(Transient) as raised:
        _read(content)

    assert raised.value.cause == "bad_body"


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-03-05T10:00:00.000Z\x00junk",
        "2026-03-05\u00e910:00:00.000Z",
        "2026-03-05510:00:00Z",
        "2026-03-05510-05",  # nothing but digits and dashes: a digit taken as the separator
        "2026W104-00W-23",
    ],
    ids=["nul-and-junk", "accented-separator", "digit-separator", "digit-then-offset", "week"],
)
def test_a_timestamp_python_would_read_past_its_date_separator_or_a_nul_is_rejected(
    stamp: str,
) -> None:
    page = _read(envelope([row(1), row(2, updated_at=stamp)]))

    assert page.batch.num_rows == 1
    (reject,) = page.rejects
    assert reject.reason == "updated_at is not an ISO-8601 timestamp with offset"


def test_a_reject_reason_names_the_problem_not_the_value() -> None:
    # The dashboard and the checks count rejects by reason: an API that drops the Z from every
    # updated_at must make one line of N rows, not N lines of one. The value stays in the
    # reject's allowlisted values, the window in its slice.
    bad = [
        row(0) | {"updated_at": "2026-03-02T10:00:00.000"},
        row(1) | {"updated_at": "2026-03-07T11:30:00.000"},
        row(2) | {"communicated_at": "2026-04-02T00:00:00.000Z"},
        row(3) | {"communicated_at": "2026-05-09T00:00:00.000Z"},
        row(4) | {"outcome_option": "x" * 300},
        row(5) | {"outcome_option": "y" * 400},
        row(6) | {"public_id": "a\n"},
        row(7) | {"public_id": "b\x01"},
    ]

    rejects = validate_rows(bad, SINCE, UNTIL).rejects

    assert len(rejects) == 8
    assert len({r.reason for r in rejects}) == 4
    assert rejects[0].values["updated_at"] == "2026-03-02T10:00:00.000"


def test_an_object_with_a_repeated_key_in_a_field_is_described_as_an_object() -> None:
    nested = note_repeated_keys([("a", 1), ("a", 2)])

    rejects = validate_rows([row(0) | {"outcome_option": nested}], SINCE, UNTIL).rejects

    assert rejects[0].reason == "outcome_option is dict, expected a string"


def test_a_new_field_is_reported_when_it_first_comes_on_a_row_naming_a_field_twice() -> None:
    pairs = [*row(0).items(), ("outcome_option", "RPC"), ("borrower_phone", "+1-555-0100")]

    result = validate_rows([note_repeated_keys(pairs)], SINCE, UNTIL)

    assert [r.reason for r in result.rejects] == ["the row names outcome_option more than once"]
    assert result.extra_fields == {"borrower_phone"}
    assert "555-0100" not in str(result.rejects)


def test_a_row_with_several_problems_is_rejected_naming_each() -> None:
    broken = {k: v for k, v in row(0).items() if k != "interaction_source"}
    broken |= {"is_active": "yes", "communicated_at": "2026-04-02T00:00:00.000Z"}

    rejects = validate_rows([broken], SINCE, UNTIL).rejects

    assert rejects[0].reason == (
        "missing field interaction_source; is_active is str, expected a boolean; "
        "communicated_at is outside the requested window"
    )


def test_a_row_naming_a_field_twice_is_rejected_naming_its_other_problems_too() -> None:
    pairs = [*row(0, is_active="yes").items(), ("outcome_option", "RPC")]

    rejects = validate_rows([note_repeated_keys(pairs)], SINCE, UNTIL).rejects

    assert rejects[0].reason == (
        "the row names outcome_option more than once; is_active is str, expected a boolean"
    )
    assert rejects[0].public_id == row(0)["public_id"]
