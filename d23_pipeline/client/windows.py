"""Half-open ``[since, until)`` time windows on ``communicated_at``, and how to cut them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from d23_pipeline.schema import format_timestamp

ONE_MS = timedelta(milliseconds=1)


def _ceil_ms(value: datetime) -> datetime:
    # Row timestamps have millisecond precision, so rounding a bound UP to the next millisecond
    # keeps exactly the same rows in [since, until) while making the bound sendable as-is.
    value = value.astimezone(UTC)
    extra = value.microsecond % 1000
    return value if not extra else value + timedelta(microseconds=1000 - extra)


@dataclass(frozen=True, order=True)
class Window:
    """A half-open ``[since, until)`` interval of tz-aware UTC datetimes (millisecond bounds)."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("Window bounds must be timezone-aware datetimes")
        object.__setattr__(self, "since", _ceil_ms(self.since))
        object.__setattr__(self, "until", _ceil_ms(self.until))
        if self.since >= self.until:
            raise ValueError(f"empty window: since {self.since} is not before until {self.until}")

    @property
    def duration(self) -> timedelta:
        """``until - since``."""
        return self.until - self.since

    @property
    def since_text(self) -> str:
        """``since`` in the API's ``YYYY-MM-DDTHH:MM:SS.sssZ`` form."""
        return format_timestamp(self.since)

    @property
    def until_text(self) -> str:
        """``until`` in the API's ``YYYY-MM-DDTHH:MM:SS.sssZ`` form."""
        return format_timestamp(self.until)

    @property
    def key(self) -> str:
        """A stable file-name-safe id, e.g. ``20260501T000000000Z-20260502T000000000Z``."""
        return f"{_compact(self.since)}-{_compact(self.until)}"

    @classmethod
    def from_key(cls, key: str) -> Window:
        """The window whose :attr:`key` is ``key`` (e.g. read back from a checkpoint file name)."""
        since, _, until = key.partition("-")
        try:
            return cls(_uncompact(since), _uncompact(until))
        except ValueError:
            raise ValueError(f"not a window key: {key!r}") from None

    def split(self, size: timedelta) -> list[Window]:
        """Consecutive slices of ``size`` covering the window; the last one may be shorter."""
        if size < ONE_MS:
            raise ValueError(f"slice size must be at least 1 ms (got {size})")
        slices = []
        start = self.since
        while start < self.until:
            end = min(start + size, self.until)
            slices.append(Window(start, end))
            start = slices[-1].until
        return slices

    def halves(self) -> tuple[Window, Window]:
        """Two windows meeting at the (millisecond-aligned) midpoint."""
        if self.duration < 2 * ONE_MS:
            raise ValueError(f"window {self} is too short to halve")
        middle = self.since + (self.duration // 2 // ONE_MS) * ONE_MS
        return Window(self.since, middle), Window(middle, self.until)

    def __str__(self) -> str:
        return f"[{self.since_text}, {self.until_text})"


def _compact(value: datetime) -> str:
    return format_timestamp(value).replace("-", "").replace(":", "").replace(".", "")


def _uncompact(value: str) -> datetime:
    return datetime.strptime(value, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
