"""Calendar months as the pipeline names them: ``YYYY-MM``, and partition keys ``YYYY-MM-01``."""

from datetime import date


def month_index(month: str) -> int:
    """Months since year 0 of ``YYYY-MM`` (or a ``YYYY-MM-01`` partition key)."""
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def month_name(index: int) -> str:
    """The ``YYYY-MM`` of a :func:`month_index`."""
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def months_up_to(day: date, count: int) -> list[str]:
    """The ``count`` months up to and including ``day``'s month, oldest first."""
    last = day.year * 12 + day.month - 1
    return [month_name(i) for i in range(last - count + 1, last + 1)]
