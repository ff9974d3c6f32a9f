"""Counts in the words people read: run logs, error messages, the dashboard."""


def counted(n: int, noun: str) -> str:
    """``n`` ``noun``s, in thousands with commas: "1 slice", "1,204 attempts"."""
    return f"{n:,} {noun}{'s' * (n != 1)}"
