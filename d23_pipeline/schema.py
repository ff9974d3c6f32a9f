"""The D23 row contract: the allowlist of fields, their types, and row validation.

Only the nine documented fields ever leave this module. A row that breaks the contract becomes a
:class:`RejectedRow` with its reason (and only allowlisted values), never a silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STRING_FIELDS = ("public_id", "communication_type", "interaction_source", "outcome_option")
BOOL_FIELDS = ("is_active", "is_ptp_broken")
TIMESTAMP_FIELDS = ("communicated_at", "created_at", "updated_at")
D23_FIELDS: tuple[str, ...] = (
    "public_id",
    "communication_type",
    "interaction_source",
    "outcome_option",
    "is_active",
    "is_ptp_broken",
    "communicated_at",
    "created_at",
    "updated_at",
)
_ALLOWED = frozenset(D23_FIELDS)

# The API's own format; anything else ISO-8601 with an offset is accepted and rewritten to it.
_CANONICAL_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def format_timestamp(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.sssZ`` in UTC: the only form the API is sent, and the stored form."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries an offset; raise ValueError otherwise."""
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


@dataclass
class ValidationResult:
    rows: list[dict[str, Any]]
    rejects: list[RejectedRow]
    extra_fields: set[str]


def _describe(value: Any) -> str:
    return "an empty string" if value == "" else type(value).__name__


def _canonical_ts(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is {_describe(value)}, expected an ISO-8601 string")
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise ValueError(
            f"{name} is not an ISO-8601 timestamp with offset: {value[:40]!r}"
        ) from None
    if _CANONICAL_TS.match(value):
        return value
    return format_timestamp(parsed)


def _check_row(raw: dict[str, Any], since: str, until: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in STRING_FIELDS:
        if name not in raw:
            raise ValueError(f"missing field {name}")
        value = raw[name]
        if not isinstance(value, str) or (name == "public_id" and not value):
            expected = "a non-empty string" if name == "public_id" else "a string"
            raise ValueError(f"{name} is {_describe(value)}, expected {expected}")
        row[name] = value
    for name in BOOL_FIELDS:
        if name not in raw:
            raise ValueError(f"missing field {name}")
        value = raw[name]
        if not isinstance(value, bool):
            raise ValueError(f"{name} is {_describe(value)}, expected a boolean")
        row[name] = value
    for name in TIMESTAMP_FIELDS:
        if name not in raw:
            raise ValueError(f"missing field {name}")
        row[name] = _canonical_ts(raw[name], name)
    # Canonical strings of one fixed width compare in time order.
    if not since <= row["communicated_at"] < until:
        raise ValueError(
            f"communicated_at {row['communicated_at']} is outside the requested window "
            f"[{since}, {until})"
        )
    return row


def _allowlisted(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    return {k: raw[k] for k in D23_FIELDS if k in raw}


def validate_rows(raw_rows: Iterable[Any], since: str, until: str) -> ValidationResult:
    """Split a page into contract-conforming rows (exactly the nine fields) and rejects.

    ``since``/``until`` are canonical timestamps (see :func:`format_timestamp`) bounding
    ``communicated_at`` as ``[since, until)``.
    """
    rows: list[dict[str, Any]] = []
    rejects: list[RejectedRow] = []
    extra: set[str] = set()
    for raw in raw_rows:
        if not isinstance(raw, dict):
            rejects.append(RejectedRow(f"row is {type(raw).__name__}, expected an object", None))
            continue
        if len(raw) != len(D23_FIELDS) or not _ALLOWED.issuperset(raw):
            extra.update(k for k in raw if k not in _ALLOWED)
        try:
            rows.append(_check_row(raw, since, until))
        except ValueError as exc:
            public_id = raw.get("public_id")
            rejects.append(
                RejectedRow(
                    str(exc),
                    public_id if isinstance(public_id, str) and public_id else None,
                    _allowlisted(raw),
                )
            )
    return ValidationResult(rows, rejects, extra)
