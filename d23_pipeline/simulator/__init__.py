"""A faithful local stand-in for the ClearGrid Exports API (D23 only), for the demo and tests.

Plain Python: :class:`Simulator` answers requests through :meth:`Simulator.handle`, served
in-process by :meth:`Simulator.transport` or over loopback by :func:`serve`.
"""

from d23_pipeline.simulator.app import DROP, SimResponse, SimStats, Simulator
from d23_pipeline.simulator.config import BadRows, Faults, SimulatorConfig
from d23_pipeline.simulator.data import FAKE_PII_MARKERS
from d23_pipeline.simulator.server import serve

__all__ = [
    "DROP",
    "FAKE_PII_MARKERS",
    "BadRows",
    "Faults",
    "SimResponse",
    "SimStats",
    "Simulator",
    "SimulatorConfig",
    "serve",
]
