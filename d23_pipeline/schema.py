"""The D23 row contract: the allowlist of fields, their types, and row validation.

Only the nine documented fields ever leave this module. A row that breaks the contract becomes a
:class:`RejectedRow` with its reason (and only allowlisted values), never a silent drop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from d23_pipeline.settings import is_text

if TYPE_CHECKING:  # loaded where rows are at hand (d23_pipeline/schema_arrow.py)
    import pyarrow as pa

# The one statement of the contract: each field once, by kind, in the API's (and storage) order.
STRING_FIELDS = ("public_id", "communication_type", "interaction_source", "outcome_option")
BOOL_FIELDS = ("is_active", "is_ptp_broken")
TIMESTAMP_FIELDS = ("communicated_at", "created_at", "updated_at")
D23_FIELDS: tuple[str, ...] = STRING_FIELDS + BOOL_FIELDS + TIMESTAMP_FIELDS
_ALLOWED = frozenset(D23_FIELDS)
# The API's own format; anything else ISO-8601 with an offset is accepted and rewritten to it.
_CANONICAL_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# The longest text a contract field may hold. The contract names ids and codes of a controlled
# vocabulary, not free text: a value far past this is not D23 data (a note in the wrong field, a
# broken serializer), and an unbounded one broke the month's chart and bloated metadata.
MAX_TEXT_LENGTH = 256
# A page whose rows list is empty: no row for Arrow's reader to read, so pyarrow is not loaded
# for it. Another key of that name first (in other data) decides either way only whether
# Arrow's reader is tried; the strict parser reads what it leaves.
_NO_ROWS = re.compile(rb'"rows"\s*:\s*\[\s*\]')
# Unicode's control characters (C0, DEL, C1): no id holds one, and a key with a newline or a NUL
# in it cannot be quoted, looked up or shown as the same key everywhere.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A timestamp's date, in the forms fromisoformat reads (calendar or week, extended or basic),
# then ISO's T, or RFC 3339's t or space, before the time.
_ISO_DATE_THEN_TIME = re.compile(
    r"(?:\d{4}-\d\d-\d\d|\d{8}|\d{4}-W\d\d(?:-\d)?|\d{4}W\d\d\d?)(?:[Tt ]|$)", re.ASCII
)


def format_timestamp(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.sssZ`` in UTC: the only form the API is sent, and the stored form."""
    value = value.astimezone(UTC)
    # Not strftime's %Y: glibc writes year 999 as '999', not '0999'.
    return (
        f"{value:%Y}".zfill(4)
        + value.strftime("-%m-%dT%H:%M:%S.")
        + (f"{value.microsecond // 1000:03d}Z")
    )


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries an offset; raise ValueError otherwise."""
    # datetime.fromisoformat (3.11) stops reading at a NUL, and takes any one character between
    # the date and the time: "...00.000Z\x00junk" or "2026-03-05é10:00Z" would pass as times.
    if _CONTROL.search(value):
        raise ValueError("timestamp holds a control character")
    if not _ISO_DATE_THEN_TIME.match(value):
        raise ValueError("not an ISO-8601 date, then T and a time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return parsed


@dataclass(frozen=True)
class RejectedRow:
    """A row that broke the contract, with the reason and only its allowlisted values."""

    reason: str
    public_id: str | None
    values: dict[str, Any] = field(default_factory=dict)
    # How many valid rows of its page come before it: where it lies in the API's order, which a
    # walk needs to tell a reject served again after a 504 from a new one alike.
    rows_before: int | None = field(default=None, compare=False)
    # Handed over valid by the same read before (a walk's re-read served it again, broken since):
    # quarantined, but the same source row as the one counted.
    served_valid: bool = field(default=False, compare=False)


@dataclass
class ValidationResult:
    rows: list[dict[str, Any]]
    rejects: list[RejectedRow]
    extra_fields: set[str]
    # The same rows as Arrow, when the whole page passed the columnar check.
    batch: pa.RecordBatch | None = None


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        # Python reads 1e400 as inf, and NaN / Infinity (not JSON, but sent) as themselves.
        return "NaN" if math.isnan(value) else f"a number beyond a double ({value})"
    if isinstance(value, dict):  # RepeatedKeys too: an object, whichever way it was decoded
        return "dict"
    return "an empty string" if value == "" else type(value).__name__


def _canonical_ts(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is {_describe(value)}, expected an ISO-8601 string")
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO-8601 timestamp with offset") from None
    if _CANONICAL_TS.match(value):
        return value
    try:
        return format_timestamp(parsed)
    except OverflowError:  # year 1 at +01:00 has no UTC instant in datetime's range
        raise ValueError(f"{name} is outside the range of UTC timestamps") from None


def canonical_timestamp(value: Any) -> str | None:
    """``value`` as the canonical UTC text rows are stored with, or None when it is no
    timestamp (a bad row's field, say)."""
    try:
        return _canonical_ts(value, "value")
    except (ValueError, OverflowError):
        return None


def _text_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the string field ``name``, or None if it can."""
    if not isinstance(value, str) or (name == "public_id" and not value):
        expected = "a non-empty string" if name == "public_id" else "a string"
        return f"{name} is {_describe(value)}, expected {expected}"
    if not is_text(value):
        return (
            f"{name} is not valid Unicode text (it holds a lone surrogate, or bytes that are "
            "not UTF-8)"
        )
    if len(value) > MAX_TEXT_LENGTH:
        return f"{name} is longer than the {MAX_TEXT_LENGTH} characters allowed"
    if name == "public_id":
        if value.isspace():
            return "public_id is only whitespace, expected an id"
        if _CONTROL.search(value):
            return "public_id holds a control character"
    return None


def _usable_id(raw: Any) -> str | None:
    """The row's public_id, for its reject, when it is one a good row could have."""
    public_id = raw.get("public_id")
    return public_id if _text_problem("public_id", public_id) is None else None


def _check_row(raw: dict[str, Any], since: str, until: str) -> dict[str, Any]:
    """The row's nine fields, or a ValueError naming every problem it has (one fixed should not
    reveal the next only at the source's next read)."""
    row: dict[str, Any] = {}
    problems: list[str] = []
    for name in D23_FIELDS:
        if name not in raw:
            problems.append(f"missing field {name}")
            continue
        try:
            row[name] = _checked_field(name, raw[name])
        except ValueError as exc:
            problems.append(str(exc))
    # Canonical strings of one fixed width compare in time order.
    at = row.get("communicated_at")
    if at is not None and not since <= at < until:
        problems.append("communicated_at is outside the requested window")
    if problems:
        raise ValueError("; ".join(problems))
    return row


def _checked_field(name: str, value: Any) -> Any:
    if name in TIMESTAMP_FIELDS:
        return _canonical_ts(value, name)
    if name in BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} is {_describe(value)}, expected a boolean")
        return value
    if problem := _text_problem(name, value):
        raise ValueError(problem)
    return value


def _allowlisted(raw: Any) -> dict[str, Any]:
    # An allowlisted field can still carry an object or a list of anything (notes, a phone
    # number): only what a contract field can hold is kept, the rest by its kind alone.
    if not isinstance(raw, dict):
        return {}
    return {k: _kept(raw[k]) for k in D23_FIELDS if k in raw}


def _kept(value: Any) -> Any:
    """A rejected row's value as stored: itself, its first characters past the longest a field
    may hold (and its length), or only its kind."""
    if not _storable(value):
        return f"<{_describe(value)}>"
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        return f"{value[:MAX_TEXT_LENGTH]}... ({len(value):,} characters)"
    return value


def _storable(value: Any) -> bool:
    # Not a non-finite float: the stored values would hold NaN / Infinity, which JSON cannot.
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | bool | int)


class RepeatedKeysError(ValueError):
    """A page names some key twice in one object: decode it with :func:`note_repeated_keys`."""


class RepeatedKeys(dict[str, Any]):
    """A JSON object that named some keys more than once (``repeated``); the last value of each
    is kept, as JSON parsers do, but which one the API meant is unknown."""

    repeated: frozenset[str] = frozenset()


def note_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: a dict, or :class:`RepeatedKeys`."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    noted = RepeatedKeys(obj)
    names = [k for k, _ in pairs]
    noted.repeated = frozenset(k for k in obj if names.count(k) > 1)
    return noted


def serves_no_rows(content: bytes) -> bool:
    """Whether a page's first ``"rows"`` key holds ``[]``: then no row is Arrow's to read."""
    at = content.find(b'"rows"')  # not a search of the whole page for the pattern: ~50x slower
    return at >= 0 and _NO_ROWS.match(content, at) is not None


def _conforming_batch(raw_rows: list[Any], since: str, until: str) -> pa.RecordBatch | None:
    """The page as Arrow if every row already is a canonical contract row, else None."""
    if not raw_rows or not all(type(raw) is dict and tuple(raw) == D23_FIELDS for raw in raw_rows):
        return None
    from d23_pipeline.schema_arrow import canonical_batch

    return canonical_batch(raw_rows, since, until)


def validate_rows(raw_rows: Iterable[Any], since: str, until: str) -> ValidationResult:
    """Split a page into contract-conforming rows (exactly the nine fields) and rejects.

    ``raw_rows`` are rows as decoded from JSON. ``since``/``until`` are canonical timestamps (see
    :func:`format_timestamp`) bounding ``communicated_at`` as ``[since, until)``.
    """
    raw_rows = raw_rows if isinstance(raw_rows, list) else list(raw_rows)
    batch = _conforming_batch(raw_rows, since, until)
    if batch is not None:
        return ValidationResult(raw_rows, [], set(), batch)
    rows: list[dict[str, Any]] = []
    rejects: list[RejectedRow] = []
    extra: set[str] = set()
    for raw in raw_rows:
        if not isinstance(raw, dict):
            rejects.append(
                RejectedRow(f"row is {type(raw).__name__}, expected an object", None, {}, len(rows))
            )
            continue
        # Named even on a row rejected below: the first rows to carry a new field may be those.
        if len(raw) != len(D23_FIELDS) or not _ALLOWED.issuperset(raw):
            extra.update(k for k in raw if k not in _ALLOWED)
        # Which value of a repeated contract field the API meant is unknown; a repeated field
        # outside the contract is dropped like any extra field.
        repeated = raw.repeated & _ALLOWED if isinstance(raw, RepeatedKeys) else frozenset()
        problems = []
        if repeated:
            problems.append(f"the row names {', '.join(sorted(repeated))} more than once")
        try:
            row = _check_row(raw, since, until)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            public_id = None if "public_id" in repeated else _usable_id(raw)
            rejects.append(
                RejectedRow("; ".join(problems), public_id, _allowlisted(raw), len(rows))
            )
        else:
            rows.append(row)
    return ValidationResult(rows, rejects, extra)
