"""Calendar months as the pipeline names them: ``YYYY-MM``, and partition keys ``YYYY-MM-01``.

The one home of month arithmetic, for the pipeline, the simulator, the tests and the benchmarks;
plain Python, so the simulator can use it without importing Dagster.
"""

import re
from datetime import UTC, date, datetime

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")  # not \d: other scripts' digits


def is_month(value: str) -> bool:
    """Whether ``value`` is exactly a ``YYYY-MM`` month."""
    return _MONTH.fullmatch(value) is not None


def month_index(month: str) -> int:
    """Months since year 0 of ``YYYY-MM`` (or a ``YYYY-MM-01`` partition key)."""
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def month_name(index: int) -> str:
    """The ``YYYY-MM`` of a :func:`month_index`."""
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def months_between(first: str, last: str) -> list[str]:
    """The ``YYYY-MM`` months from ``first`` to ``last`` (months or partition keys), both
    included; none if ``last`` is before ``first``."""
    return [month_name(i) for i in range(month_index(first), month_index(last) + 1)]


def months_up_to(day: date, count: int) -> list[str]:
    """The ``count`` months up to and including ``day``'s month, oldest first."""
    last = day.year * 12 + day.month - 1
    return [month_name(i) for i in range(last - count + 1, last + 1)]


def month_of(moment: datetime) -> str:
    """The ``YYYY-MM`` of an instant, in UTC."""
    return f"{moment.astimezone(UTC):%Y-%m}"


def month_start(month: str) -> datetime:
    """The first instant (UTC) of ``YYYY-MM`` (or a ``YYYY-MM-01`` partition key)."""
    return datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=UTC)


def month_end(month: str) -> datetime:
    """The first instant (UTC) of the month after ``month``."""
    return month_start(month_name(month_index(month) + 1))


def month_window(month: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``month`` in UTC."""
    return month_start(month), month_end(month)
