"""Whether a slice's read is proven complete, from the API's exact counts around its walk.

The API's only end-of-data signal is ``nextCursor: null``, and nothing promises that a walk which
ends has returned every row of its window (a "via" dataset joined through a parent can end a
walk early). Exact totals of small windows, counted before and after the walk, are the one
cross-check the API offers. A slice is *verified* when what it served is consistent with them:

- equal to a count that did not move during the walk, or
- on a read again (which walks on past the API's early ends), for a window that changed while
  it was read, between the two counts (rows written ahead of the cursor are served, rows deleted
  ahead of it are not, so a complete walk lands in between).

Anything else (a first read whose counts moved, a read whose walks ran out of read-ons, fewer
rows than both counts, a count the API would not give exactly) leaves the slice unverified: its
rows may add and update, never delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


@dataclass(frozen=True)
class WindowTotal:
    """``pagination.total`` for a window: ``None`` when the API could not count."""

    total: int | None
    exact: bool
    note: str | None
    # The API's clock when it counted, to the second (its answer's Date header), if it said;
    # not part of what the count is.
    counted_at: datetime | None = field(default=None, compare=False)

    @property
    def exact_total(self) -> int | None:
        """The total when the API vouches for it, else ``None``."""
        return self.total if self.exact and self.total is not None else None


# Why a slice verified by its read was left as read, unverified, when the month was counted
# again once read (see landing/month.py): its count had moved at the last such count, or the
# API gave none exactly.
LeftAsRead = Literal["moved", "uncounted"]

# The most rows a count may claim: the warehouse keeps counts as BIGINT (d23.slice_verification).
MAX_COUNT = 2**63 - 1


def sum_totals(totals: Sequence[WindowTotal]) -> WindowTotal:
    """The count of a window from the counts of parts that tile it; parts adding up past
    :data:`MAX_COUNT` give no count (each part was checked on its own)."""
    if not totals:
        return WindowTotal(0, True, None)
    known = [t.total for t in totals if t.total is not None]
    total = sum(known) if len(known) == len(totals) else None
    if total is not None and total > MAX_COUNT:
        return WindowTotal(None, False, "overflow")
    stamps = [t.counted_at for t in totals]
    return WindowTotal(
        total,
        all(t.exact for t in totals),
        next((t.note for t in totals if t.note), None),
        None if None in stamps else max(s for s in stamps if s is not None),
    )


@dataclass(frozen=True)
class SliceProof:
    """What one read of a slice served against the API's counts around it."""

    served: int
    total_before: int | None
    total_after: int | None
    verified: bool
    reads: int = 1
    # A walk of the read met an end it could not read on past: more of them than the slice has
    # rows, or one inside an instant (see walk.py).
    read_on_ran_out: bool = False
    # Why the month's count once read left it as read (LeftAsRead): its count had moved since
    # its last read (rows moved in since are in no read), or the API no longer counted it
    # exactly (whether any did is not known). Either way it proves nothing.
    left_as_read: LeftAsRead | None = None

    @property
    def reason(self) -> str:
        """Why the slice is (not) verified, with what it served against its counts, for run
        logs and check descriptions."""
        before, after = ("none" if n is None else n for n in (self.total_before, self.total_after))
        return f"{self.why} (served {self.served}; exact counts {before} before, {after} after)"

    @property
    def why(self) -> str:
        """Why the slice is (not) verified, in words alone."""
        if self.left_as_read == "moved":
            return (
                "its count moved after it was read, at the read's last count of the month (a "
                "row moved in from a slice read later, or out); left as read for the month's "
                "next read"
            )
        if self.left_as_read == "uncounted":
            return (
                "the API gave no exact count of it when the read, once done, counted the month "
                "again (a row that moved into it during the read would be missing); left as "
                "read for the month's next read"
            )
        before, after = self.total_before, self.total_after
        if before is None or after is None:
            when = {(True, True): "before or after", (True, False): "before"}.get(
                (before is None, after is None), "after"
            )
            return f"the API gave no exact count {when} the walk"
        if self.served < min(before, after):
            return "fewer rows than the counts"
        if self.served > max(before, after):
            return "more rows than the counts"
        if self.verified:
            return "served equals the count" if before == after else "changed while read"
        if self.reads == 1 and not self.read_on_ran_out:
            return (
                "changed while read, by a first read, which does not walk on past the API's "
                "early ends: a row logged or deleted meanwhile may stand in for one left unread"
            )
        # Between two exact counts, judge leaves a read unverified only for this (which a
        # manifest or d23.slice_verification does not hold as such).
        return (
            "the API ended its walks early where they could not read on past: more often than "
            "the slice has rows, or inside an instant, before rows no request for it reaches"
        )


def judge(
    served: int,
    before: WindowTotal,
    after: WindowTotal,
    reads: int = 1,
    *,
    read_on_ran_out: bool = False,
    changed_meanwhile: bool = False,
) -> SliceProof:
    """Verify one read of a slice: ``served`` rows (valid and rejected) between two counts, by
    walks that read on past every early end they met (``read_on_ran_out`` if one did not);
    ``changed_meanwhile``: it served a row changed since its count was taken."""
    low, high = before.exact_total, after.exact_total
    verified = (
        not read_on_ran_out
        and low is not None
        and high is not None
        and min(low, high) <= served <= max(low, high)
        # Rows logged or deleted while a walk goes on can make up for rows an early end left
        # unread; only a read whose walks read on past their ends (a read again) rules it out.
        # Equal counts do not show it: as many rows may have come into the window as left it,
        # and one that came in and was served has changed since the count.
        and ((low == high and not changed_meanwhile) or reads > 1)
    )
    return SliceProof(served, low, high, verified, reads, read_on_ran_out)
