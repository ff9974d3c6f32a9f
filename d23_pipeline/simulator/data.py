"""The simulated D23 collection: generation, via-page scans, ground truth and change knobs.

Every entry of the shared collection (this lender's rows and other tenants' rows alike) is one
Python int (about 65 bytes with its list slot: ~95 MB for a million rows plus the other
tenants' share) and ``bisect`` runs in C::

    entry = (((communicated_ms << 96) | object_id) << 96) | data

Integer order is therefore the API's sort order, ``(communicated_at, _id)``, and ``entry >> 96``
is the key a cursor carries. ``data`` packs the row's other fields, low bits first: updated_at
ms (42), created_at ms (42), is_ptp_broken, is_active, outcome (4), source (2), type (3) and a
"this lender" flag (see ``_pack``). Bad rows are small per-row overrides kept beside the list.
"""

from __future__ import annotations

import random
import threading
import time
from bisect import bisect, bisect_left, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from d23_pipeline import months
from d23_pipeline.simulator.config import BadRowKind, BadRows, SimulatorConfig

COMMUNICATION_TYPES = ("CALL", "WHATSAPP", "SMS", "EMAIL", "FIELD_VISIT")
INTERACTION_SOURCES = ("AGENT", "IVR", "BORROWER")
OUTCOME_OPTIONS = (
    "PTP",
    "RPC",
    "NO_ANSWER",
    "BUSY",
    "SWITCHED_OFF",
    "WRONG_NUMBER",
    "CALLBACK_REQUESTED",
    "REFUSED_TO_PAY",
    "DISPUTE",
    "ALREADY_PAID",
    "SETTLED",
    "LEFT_MESSAGE",
)
_PTP = OUTCOME_OPTIONS.index("PTP")

# Substrings of the fake PII carried by ``extra_pii`` rows: tests grep a warehouse for them.
FAKE_PII_MARKERS = ("PII-NOTE", "+1-555-01", "@pii.example")

INVALID_KINDS = frozenset({"missing_public_id", "bad_timestamp", "wrong_type"})

_KEY_BITS = 96  # object id bits below communicated_ms in a key
_DATA_BITS = 96
_OID_MASK = (1 << _KEY_BITS) - 1
_DATA_MASK = (1 << _DATA_BITS) - 1
_TS_MASK = (1 << 42) - 1  # epoch milliseconds fit 42 bits until the year 2109
_CREATED_SHIFT = 42
_BROKEN = 1 << 84
_ACTIVE = 1 << 85
_OUTCOME_SHIFT = 86
_SOURCE_SHIFT = 90
_TYPE_SHIFT = 92
_MINE = 1 << 95  # set on this lender's rows; other tenants' entries only take part in scans

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def _cumulative(weights: Iterable[float]) -> list[float]:
    total, out = 0.0, []
    weights = list(weights)
    scale = sum(weights)
    for w in weights:
        total += w / scale
        out.append(total)
    out[-1] = 1.0
    return out


_TYPE_CUM = _cumulative((62, 16, 11, 6, 5))
# Sources depend on the channel: IVR only dials calls, a field visit is always an agent.
_SOURCE_CUM = [
    _cumulative(w) for w in ((72, 22, 6), (70, 0, 30), (80, 10, 10), (85, 0, 15), (100, 0, 0))
]
_CALL_OUTCOME_CUM = _cumulative((10, 12, 30, 10, 9, 4, 7, 5, 2, 3, 2, 6))
_MESSAGE_OUTCOME_CUM = _cumulative((8, 10, 38, 0, 0, 3, 9, 4, 3, 5, 2, 18))
_VISIT_OUTCOME_CUM = _cumulative((14, 22, 20, 0, 0, 4, 6, 10, 4, 8, 6, 6))
_OUTCOME_CUM = [
    _CALL_OUTCOME_CUM,
    _MESSAGE_OUTCOME_CUM,
    _MESSAGE_OUTCOME_CUM,
    _MESSAGE_OUTCOME_CUM,
    _VISIT_OUTCOME_CUM,
]


def _pack(
    ctype: int,
    source: int,
    outcome: int,
    active: bool,
    broken: bool,
    created: int,
    updated: int,
) -> int:
    """This lender's row fields in ``data`` bits (other tenants' entries have ``data == 0``)."""
    return (
        _MINE
        | ctype << _TYPE_SHIFT
        | source << _SOURCE_SHIFT
        | outcome << _OUTCOME_SHIFT
        | (_ACTIVE if active else 0)
        | (_BROKEN if broken else 0)
        | created << _CREATED_SHIFT
        | updated
    )


def _entry(ms: int, oid: int, data: int) -> int:
    return (((ms << _KEY_BITS) | oid) << _DATA_BITS) | data


def key_bound(ms: int, oid: int = 0) -> int:
    """The smallest entry whose key is ``(ms, oid)`` or later: a ``bisect_left`` probe."""
    return ((ms << _KEY_BITS) | oid) << _DATA_BITS


def entry_key(entry: int) -> tuple[int, int]:
    """``(communicated_ms, object_id)`` of an entry: what a cursor encodes."""
    key = entry >> _DATA_BITS
    return key >> _KEY_BITS, key & _OID_MASK


_MINUTE_PREFIX: dict[int, str] = {}


def format_ms(ms: int) -> str:
    """Epoch milliseconds as the API's ``YYYY-MM-DDTHH:MM:SS.sssZ``."""
    # Hot path of every page: strftime only once per minute seen, from a bounded cache.
    minute, rest = divmod(ms, _MINUTE)
    prefix = _MINUTE_PREFIX.get(minute)
    if prefix is None:
        if len(_MINUTE_PREFIX) > 200_000:
            _MINUTE_PREFIX.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
        _MINUTE_PREFIX[minute] = prefix
    seconds, millis = divmod(rest, 1000)
    return f"{prefix}{seconds:02d}.{millis:03d}Z"


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of a datetime (naive ones are taken as UTC), truncated like the API."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def month_of(ms: int) -> str:
    """The ``YYYY-MM`` month (UTC) of an epoch-millisecond instant."""
    return months.month_of(_EPOCH + timedelta(milliseconds=ms))


def month_bounds(month: str) -> tuple[int, int]:
    """``[start, end)`` of a ``YYYY-MM`` month in epoch milliseconds."""
    start, end = months.month_window(month)
    return to_ms(start), to_ms(end)


def _render(entry: int, override: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    data = entry & _DATA_MASK
    key = entry >> _DATA_BITS
    row: dict[str, Any] = {
        "public_id": f"{key & _OID_MASK:024x}",
        "communication_type": COMMUNICATION_TYPES[data >> _TYPE_SHIFT & 7],
        "interaction_source": INTERACTION_SOURCES[data >> _SOURCE_SHIFT & 3],
        "outcome_option": OUTCOME_OPTIONS[data >> _OUTCOME_SHIFT & 15],
        "is_active": data & _ACTIVE != 0,
        "is_ptp_broken": data & _BROKEN != 0,
        "communicated_at": format_ms(key >> _KEY_BITS),
        "created_at": format_ms(data >> _CREATED_SHIFT & _TS_MASK),
        "updated_at": format_ms(data & _TS_MASK),
    }
    if override is not None:
        for name, value in override[1].items():
            if value is _REMOVE:
                row.pop(name, None)
            else:
                row[name] = value
    return row


def _given_entry(row: Mapping[str, Any]) -> int:
    """The entry that serves ``row`` exactly as given; ValueError for a row it cannot, since
    entries hold the simulator's own form: an ObjectId's 24 hex digits as ``public_id``,
    canonical timestamps and its vocabulary."""
    try:
        data = _pack(
            COMMUNICATION_TYPES.index(row["communication_type"]),
            INTERACTION_SOURCES.index(row["interaction_source"]),
            OUTCOME_OPTIONS.index(row["outcome_option"]),
            bool(row["is_active"]),
            bool(row["is_ptp_broken"]),
            to_ms(datetime.fromisoformat(row["created_at"])),
            to_ms(datetime.fromisoformat(row["updated_at"])),
        )
        entry = _entry(
            to_ms(datetime.fromisoformat(row["communicated_at"])), int(row["public_id"], 16), data
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the simulator cannot serve {dict(row)!r}: {exc!r}") from None
    if _render(entry, None) != dict(row):
        raise ValueError(f"the simulator cannot serve {dict(row)!r} exactly as given")
    return entry


class _Remove:
    def __repr__(self) -> str:
        return "<remove field>"


_REMOVE = _Remove()


def _bad_row_patches(bad: BadRows) -> list[tuple[str, dict[str, Any]]]:
    """The overrides for one month's bad rows, cycling through a few shapes of each kind."""
    patches: list[tuple[str, dict[str, Any]]] = []
    for i in range(bad.missing_public_id):
        patches.append(("missing_public_id", {"public_id": _REMOVE if i % 2 == 0 else ""}))
    stamps = (
        ("updated_at", "yesterday"),
        ("communicated_at", "yesterday"),
        ("created_at", "31/01/2026 14:05"),
        ("updated_at", "not-a-date"),
    )
    for i in range(bad.bad_timestamp):
        name, value = stamps[i % len(stamps)]
        patches.append(("bad_timestamp", {name: value}))
    wrong = (("is_active", "yes"), ("outcome_option", 7), ("is_ptp_broken", 0))
    for i in range(bad.wrong_type):
        name, value = wrong[i % len(wrong)]
        patches.append(("wrong_type", {name: value}))
    for i in range(bad.extra_pii):
        patches.append(
            (
                "extra_pii",
                {
                    "notes": f"PII-NOTE borrower asked for a call back after payday (case {i})",
                    "phone": f"+1-555-01{i % 100:02d}",
                    "email": f"borrower{i}@pii.example",
                },
            )
        )
    return patches


@dataclass
class Page:
    """One via page: this lender's rows among the scanned entries, and the last scanned key."""

    rows: list[dict[str, Any]]
    last_key: tuple[int, int] | None  # None when nothing was scanned
    at_end: bool  # the scan reached the end of the window


class Collection:
    """The shared D23 collection of one simulated tenant database; every method is thread-safe."""

    def __init__(
        self,
        config: SimulatorConfig,
        now: int | None = None,
        rows: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """Generate ``config.months``, or hold exactly ``rows`` (this lender's, none of other
        tenants) when they are given."""
        self._lock = threading.RLock()
        self._now = now_ms() if now is None else now
        self._clock = 0
        seed_rng = random.Random(f"d23:{config.seed}")
        self._machines = [seed_rng.getrandbits(40) for _ in range(6)]
        self._counter = seed_rng.getrandbits(24)
        self._knob_rng = random.Random(f"d23:{config.seed}:knobs")
        self._entries: list[int] = []
        self._overrides: dict[int, tuple[str, dict[str, Any]]] = {}
        if rows is None:
            for month in config.months:
                self._generate_month(config, month)
        else:
            self._entries = [_given_entry(row) for row in rows]
            if len({entry_key(e)[1] for e in self._entries}) < len(self._entries):
                raise ValueError("the rows repeat a public_id")
        self._entries.sort()

    # -- generation -------------------------------------------------------------------------

    def _month_span(self, month: str) -> tuple[int, int, bool]:
        """``[start, end)`` of a month, cut at now for the current month (rows are in the past)."""
        start, end = month_bounds(month)
        if start < self._now < end:
            return start, self._now, True
        return start, end, False

    def _next_oid(self, created_ms: int, machine: int) -> int:
        # ObjectId layout: 4-byte seconds, 5-byte machine/process, 3-byte counter.
        self._counter = (self._counter + 1) & 0xFFFFFF
        return ((created_ms // 1000) << 64) | (machine << 24) | self._counter

    def _random_row(self, rng: random.Random, comm: int, cap: int | None) -> int | None:
        """A packed lender row communicated at ``comm``; ``None`` if it is logged after ``cap``,
        else its update is cut at ``cap``."""
        r = rng.random
        ctype = bisect(_TYPE_CUM, r())
        source = bisect(_SOURCE_CUM[ctype], r())
        outcome = bisect(_OUTCOME_CUM[ctype], r())
        # Logs are written a minute or two after the contact; a few are back-filled days later.
        if r() < 0.02:
            created = comm + int(r() * 3 * _DAY)
        else:
            created = comm + int(rng.expovariate(1 / 90_000))
        active = r() >= 0.03
        # A third of promises break, one to fourteen days after they were logged; one that is
        # due to break after "now" is still unbroken, so recent months' broken share is low.
        breaks = outcome == _PTP and r() < 0.35
        broken_at = created + _DAY + int(r() * 13 * _DAY) if breaks else 0
        broken = breaks and broken_at <= self._now
        if broken:
            updated = broken_at
        elif breaks:
            updated = created
        elif not active:
            updated = created + 10 * _MINUTE + int(r() * 3 * _DAY)
        elif r() < 0.05:
            updated = created + 1000 + int(r() * _DAY)
        else:
            updated = created
        # Drawn in full even when not logged yet, so that the rows before it keep their draws
        # and ids whatever ``cap`` is.
        oid = self._next_oid(created, self._machines[int(r() * 4)])
        if cap is not None:
            if created > cap:
                return None
            updated = min(updated, cap)
        return _entry(comm, oid, _pack(ctype, source, outcome, active, broken, created, updated))

    def _generate_month(self, config: SimulatorConfig, month: str) -> None:
        # One RNG per month: a month's data does not depend on which other months are configured.
        rng = random.Random(f"d23:{config.seed}:{month}")
        # Its own id counter too: a month's ids do not depend on the months before it, which
        # change when make run is started in a new month.
        self._counter = random.Random(f"d23:{config.seed}:{month}:ids").getrandbits(24)
        # The month in progress is drawn whole and holds the rows logged so far: the same rows,
        # under the same ids, whenever the simulator starts (a restarted `make run` must not
        # look like a month whose rows were all deleted and replaced).
        start, end = month_bounds(month)
        span = end - start
        cap = self._now if start < self._now < end else None
        n = config.rows_per_month
        r = rng.random

        comms: list[int] = []
        n_ties = int(n * config.tie_share)
        while len(comms) < n_ties:
            size = min(rng.randint(2, 50), n_ties - len(comms))
            comms.extend([start + int(r() * span)] * size)
        comms.extend(start + int(r() * span) for _ in range(n - n_ties))
        drawn = [self._random_row(rng, comm, cap) for comm in comms]

        patches = _bad_row_patches(config.bad_rows)
        for index, patch in zip(rng.sample(range(n), min(len(patches), n)), patches, strict=False):
            if (row := drawn[index]) is not None:
                self._overrides[entry_key(row)[1]] = patch
        self._entries.extend(row for row in drawn if row is not None)

        # Other tenants' rows: half scattered (short pages), half in dense clusters whose runs
        # of foreign entries produce empty pages with a non-null cursor.
        share = min(max(config.other_lender_share, 0.0), 0.95)
        n_other = round(n * share / (1 - share))
        scattered = n_other // 2
        other_machines = self._machines[4:]
        others = []
        for _ in range(scattered):
            comm = start + int(r() * span)
            others.append(_entry(comm, self._next_oid(comm, other_machines[0]), 0))
        left = n_other - scattered
        while left > 0:
            size = min(rng.randint(20, 600), left)
            left -= size
            comm = start + int(r() * max(span - size * 20, 1))
            for _ in range(size):
                comm = min(comm + rng.randint(0, 20), end - 1)
                others.append(_entry(comm, self._next_oid(comm, other_machines[1]), 0))
        self._entries.extend(e for e in others if cap is None or entry_key(e)[0] < cap)

    # -- reads ------------------------------------------------------------------------------

    def _bounds(self, since: int | None, until: int | None) -> tuple[int, int]:
        entries = self._entries
        lo = 0 if since is None else bisect_left(entries, key_bound(since))
        hi = len(entries) if until is None else bisect_left(entries, key_bound(until))
        return lo, hi

    def page(
        self,
        since: int | None,
        until: int | None,
        after: tuple[int, int] | None,
        limit: int,
        descending: bool,
        ends_after: Callable[[int], bool] | None = None,
    ) -> Page:
        """Scan up to ``limit`` entries of the window past ``after``; return this lender's rows.
        An ascending scan that reaches the end of an instant ``ends_after`` names, holding a row
        of this lender, stops there and ends the walk, although the window has rows left."""
        with self._lock:
            entries = self._entries
            lo, hi = self._bounds(since, until)
            if after is not None:
                if descending:
                    hi = min(hi, bisect_left(entries, key_bound(*after)))
                else:
                    lo = max(lo, bisect_left(entries, key_bound(after[0], after[1] + 1)))
            if lo >= hi:
                return Page([], None, at_end=True)
            if descending:
                first = max(lo, hi - limit)
                scanned = entries[first:hi][::-1]
                at_end = first == lo
            else:
                last = min(hi, lo + limit)
                at_end = last == hi
                if ends_after is not None and (end := self._batch_end(lo, last, hi, ends_after)):
                    last, at_end = end, True
                scanned = entries[lo:last]
            overrides = self._overrides
            picked = [
                (e, overrides.get((e >> _DATA_BITS) & _OID_MASK)) for e in scanned if e & _MINE
            ]
        rows = [_render(e, o) for e, o in picked]
        return Page(rows, entry_key(scanned[-1]) if scanned else None, at_end)

    def _batch_end(
        self, lo: int, last: int, hi: int, ends_after: Callable[[int], bool]
    ) -> int | None:
        """Where the scan of ``entries[lo:last]`` ends early (the index past the end of the
        first instant that ends walks), if before the window's end ``hi``."""
        entries = self._entries
        shift = _DATA_BITS + _KEY_BITS
        for index in range(lo, min(last, hi - 1)):
            ms = entries[index] >> shift
            if entries[index + 1] >> shift == ms or not ends_after(ms):
                continue
            if any(e & _MINE for e in entries[bisect_left(entries, key_bound(ms)) : index + 1]):
                return index + 1
        return None

    def count(self, since: int | None, until: int | None) -> int:
        """This lender's rows in a window."""
        with self._lock:
            lo, hi = self._bounds(since, until)
            window = self._entries[lo:hi]
        return sum(1 for e in window if e & _MINE)

    def rows(self, since: int | None = None, until: int | None = None) -> list[dict[str, Any]]:
        """Every row of this lender in the window, ascending, exactly as the API serves them."""
        return [_render(e, o) for e, o in self._mine(since, until)]

    def valid_rows(self, since: int | None = None, until: int | None = None) -> list[dict]:
        """The contract-conforming rows of the window, reduced to the nine D23 fields."""
        out = []
        for e, o in self._mine(since, until):
            if o is not None and o[0] in INVALID_KINDS:
                continue
            row = _render(e, None)
            out.append(row)
        return out

    def _mine(self, since: int | None, until: int | None) -> list[tuple[int, Any]]:
        with self._lock:
            lo, hi = self._bounds(since, until)
            get = self._overrides.get
            return [
                (e, get((e >> _DATA_BITS) & _OID_MASK)) for e in self._entries[lo:hi] if e & _MINE
            ]

    def corrupt(self, public_id: str, kind: BadRowKind, fields: Mapping[str, Any]) -> None:
        """Serve this lender's row ``public_id`` with ``fields`` replaced, as a bad row of
        ``kind``, like a generated one (so ``valid_rows`` and ``bad_row_kinds`` know it)."""
        if kind not in get_args(BadRowKind):
            raise ValueError(f"unknown bad-row kind {kind!r}")
        oid = int(public_id, 16)
        with self._lock:
            if not any(e & _MINE and entry_key(e)[1] == oid for e in self._entries):
                raise KeyError(public_id)
            self._overrides[oid] = (kind, dict(fields))

    def mend(self, public_id: str) -> None:
        """Serve ``public_id`` valid again, as it was before :meth:`corrupt` (its updated_at
        unchanged)."""
        with self._lock:
            del self._overrides[int(public_id, 16)]

    def bad_row_kinds(self) -> dict[str, str]:
        """``public_id`` (as generated, even if not served) -> bad-row kind."""
        with self._lock:
            return {f"{oid:024x}": kind for oid, (kind, _) in self._overrides.items()}

    # -- change knobs -----------------------------------------------------------------------

    def _tick(self, previous_updated: int) -> int:
        """The simulator clock: wall time, but strictly after the row's and the last change."""
        self._clock = max(now_ms(), self._clock + 1, previous_updated + 1)
        return self._clock

    def _pick(self, n: int, month: str | None, wanted: Callable[[int], bool]) -> list[int]:
        """Indices of up to ``n`` random valid lender rows matching ``wanted``, ascending."""
        if month is None:
            lo, hi = 0, len(self._entries)
        else:
            start, end = month_bounds(month)
            lo, hi = self._bounds(start, end)
        overrides = self._overrides
        candidates = []
        for i in range(lo, hi):
            e = self._entries[i]
            if not e & _MINE or not wanted(e & _DATA_MASK):
                continue
            override = overrides.get((e >> _DATA_BITS) & _OID_MASK)
            if override is None or override[0] not in INVALID_KINDS:
                candidates.append(i)
        if n >= len(candidates):
            return candidates
        return sorted(self._knob_rng.sample(candidates, max(n, 0)))

    def _update(
        self, n: int, month: str | None, wanted: Callable[[int], bool], change: Callable[[int], int]
    ) -> list[str]:
        with self._lock:
            changed = []
            for i in self._pick(n, month, wanted):
                e = self._entries[i]
                data = change(e & _DATA_MASK)
                updated = self._tick(data & _TS_MASK)
                data = (data & ~_TS_MASK) | updated
                self._entries[i] = (e & ~_DATA_MASK) | data
                changed.append(f"{entry_key(e)[1]:024x}")
            return changed

    def break_promises(self, n: int, month: str | None = None) -> list[str]:
        def unbroken_ptp(data: int) -> bool:
            return (data >> _OUTCOME_SHIFT & 15) == _PTP and not data & _BROKEN

        return self._update(n, month, unbroken_ptp, lambda data: data | _BROKEN)

    def deactivate(self, n: int, month: str | None = None) -> list[str]:
        return self._update(n, month, lambda data: bool(data & _ACTIVE), lambda d: d & ~_ACTIVE)

    def hard_delete(self, n: int, month: str | None = None) -> list[str]:
        with self._lock:
            picked = self._pick(n, month, lambda data: True)
            deleted = []
            for i in reversed(picked):
                oid = entry_key(self._entries.pop(i))[1]
                self._overrides.pop(oid, None)
                deleted.append(f"{oid:024x}")
            return deleted[::-1]

    def add_late_rows(self, n: int, month: str) -> list[str]:
        with self._lock:
            start, end, _ = self._month_span(month)
            added = []
            for _ in range(n):
                comm = start + int(self._knob_rng.random() * (end - start))
                created = self._tick(comm)
                # Generate attributes as usual, then stamp them as created by this change.
                e = self._random_row(self._knob_rng, comm, None)
                data = (e & _DATA_MASK) & ~((_TS_MASK << _CREATED_SHIFT) | _TS_MASK)
                data |= created << _CREATED_SHIFT | created
                oid = self._next_oid(created, self._machines[0])
                insort(self._entries, _entry(comm, oid, data))
                added.append(f"{oid:024x}")
            return added

    def move_rows(self, n: int, from_month: str, to_month: str) -> list[str]:
        with self._lock:
            start, end, _ = self._month_span(to_month)
            picked = self._pick(n, from_month, lambda data: True)
            moved = [self._entries[i] for i in picked]
            for i in reversed(picked):
                self._entries.pop(i)
            ids = []
            for e in moved:
                comm = start + int(self._knob_rng.random() * (end - start))
                insort(self._entries, self._retimed(e, comm))
                ids.append(f"{entry_key(e)[1]:024x}")
            return ids

    def move_row(self, public_id: str, communicated_at_ms: int) -> None:
        with self._lock:
            entry = self._entries.pop(self._index_of(public_id))
            insort(self._entries, self._retimed(entry, communicated_at_ms))

    def hard_delete_row(self, public_id: str) -> None:
        with self._lock:
            self._entries.pop(self._index_of(public_id))
            self._overrides.pop(int(public_id, 16), None)

    def _index_of(self, public_id: str) -> int:
        oid = int(public_id, 16)
        index = next(
            (i for i, e in enumerate(self._entries) if e & _MINE and entry_key(e)[1] == oid), None
        )
        if index is None:
            raise KeyError(public_id)
        return index

    def _retimed(self, entry: int, comm: int) -> int:
        # The entry at a new communicated_at, updated now (created no later than communicated).
        data = entry & _DATA_MASK
        created = max(data >> _CREATED_SHIFT & _TS_MASK, comm)
        updated = self._tick(max(data & _TS_MASK, created))
        data = (data & ~((_TS_MASK << _CREATED_SHIFT) | _TS_MASK)) | (
            created << _CREATED_SHIFT | updated
        )
        return _entry(comm, entry_key(entry)[1], data)

    def __len__(self) -> int:
        return len(self._entries)
