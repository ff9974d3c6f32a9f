"""The outcome KPIs, defined once: each is a ratio of two of the counts the KPI tables hold.

The SQL that computes the rates (``warehouse/sql.py``), the outcome-mix assets' descriptions and
the README's KPI table (checked by a test) all come from :data:`KPIS`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


@dataclass(frozen=True)
class Count:
    """A count column of ``d23.outcome_kpis_monthly`` / ``d23.outcome_mix_daily``."""

    column: str
    description: str


ATTEMPTS = Count("attempts", "attempts")
CONTACTS = Count("contacts", "contacts")
RPCS = Count("rpcs", "right-party contacts")
PROMISES = Count("promises", "promises to pay")
REFUSALS = Count("refusals", "refusals")
BROKEN_PROMISES = Count("broken_promises", "promises with `is_ptp_broken`")
# In the KPI tables' column order.
COUNTS = (ATTEMPTS, CONTACTS, RPCS, PROMISES, REFUSALS, BROKEN_PROMISES)


@dataclass(frozen=True)
class Kpi:
    """``numerator / denominator``, NULL when the denominator is zero."""

    name: str
    label: str
    numerator: Count
    denominator: Count


# A month's share rises for weeks after it ends, as its promises come due and break.
BROKEN_PROMISE_SHARE = Kpi(
    "broken_promise_share", "Broken-promise share", BROKEN_PROMISES, PROMISES
)
# In the KPI tables' column order.
KPIS = (
    Kpi("contact_rate", "Contact rate", CONTACTS, ATTEMPTS),
    Kpi("rpc_rate", "RPC rate", RPCS, ATTEMPTS),
    Kpi("ptp_per_rpc", "PTP per RPC", PROMISES, RPCS),
    Kpi("ptp_per_attempt", "PTP per attempt", PROMISES, ATTEMPTS),
    Kpi("refusal_rate", "Refusal rate", REFUSALS, RPCS),
    BROKEN_PROMISE_SHARE,
)
KPI_NAMES = tuple(kpi.name for kpi in KPIS)


def kpi_table() -> str:
    """The KPIs as a markdown table: name, numerator, denominator."""
    lines = ["| KPI | numerator | denominator |", "|---|---|---|"]
    lines += [
        f"| `{k.name}` | {k.numerator.description} | {k.denominator.description} |" for k in KPIS
    ]
    return "\n".join(lines)


def shown_percent(rate: float) -> Decimal:
    """``rate`` as a percentage with one decimal, as every place shows it: the dashboard's tiles,
    its charts' hovers (plotly's ``.1f``, JavaScript's ``toFixed``: an exact tie rounds up) and
    the assets' metadata. Python's own rounding sends a tie to the even digit: 1 of 16 read
    6.2 % on a tile and 6.3 % in the hover beside it. From the float's shortest decimal, not its
    binary value: 23 of 80 is 28.75 % exactly, but ``0.2875 * 100`` is 28.749999999999996.
    (``float`` first: numpy's and Decimal's reprs name their type.)"""
    return (Decimal(repr(float(rate))) * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)


def percent_metadata(rates: Mapping[str, Any]) -> dict[str, float | None]:
    """Each KPI of ``rates`` (a row of the KPI table) as the assets' metadata gives it:
    ``<name> (%)``, rounded as :func:`shown_percent`, a number so that the UI plots it across
    materializations (None where the rate has no denominator)."""
    return {
        f"{name} (%)": None if rates[name] is None else float(shown_percent(rates[name]))
        for name in KPI_NAMES
    }
