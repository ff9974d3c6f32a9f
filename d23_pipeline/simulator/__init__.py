"""A faithful local stand-in for the ClearGrid Exports API (D23 only), for the demo and tests.

Plain Python: :class:`Simulator` answers requests through :meth:`Simulator.handle`, served
in-process by :meth:`Simulator.transport` (:func:`in_process` for a handler in front of one) or
over loopback by :func:`serve`. It is the project's one fake of the API: tests choose its rows
(``Simulator(rows=...)``), page sizes and gateway limits (:class:`Faults`), script answers
(:meth:`Simulator.script`) and read its request log (``stats.log``); the benchmarks serve its
pages.
"""

from d23_pipeline.simulator.app import (
    DROP,
    Answer,
    Drop,
    Handler,
    LoggedRequest,
    SimRequest,
    SimResponse,
    SimStats,
    Simulator,
    in_process,
)
from d23_pipeline.simulator.config import BadRowKind, BadRows, Faults, SimulatorConfig
from d23_pipeline.simulator.data import FAKE_PII_MARKERS
from d23_pipeline.simulator.server import serve

__all__ = [
    "DROP",
    "FAKE_PII_MARKERS",
    "Answer",
    "BadRowKind",
    "BadRows",
    "Drop",
    "Faults",
    "Handler",
    "LoggedRequest",
    "SimRequest",
    "SimResponse",
    "SimStats",
    "Simulator",
    "SimulatorConfig",
    "in_process",
    "serve",
]
