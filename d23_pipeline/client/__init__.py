"""A plain-Python client for the ClearGrid Exports API (D23 by default); no Dagster here."""

from d23_pipeline.client.completeness import SliceProof, WindowTotal
from d23_pipeline.client.errors import (
    ApiHostError,
    AuthenticationError,
    CursorLoopError,
    DatasetNotFoundError,
    ExportsApiError,
    GatewayDownError,
    LenderMismatchError,
    NotTheApiError,
    ProtocolError,
    RetriesExhaustedError,
    WindowTooHeavyError,
)
from d23_pipeline.client.exports import (
    CLOCK_SLACK,
    ExportsClient,
    Recount,
    SliceDone,
    SliceEvent,
    SlicePage,
    SliceRestart,
)
from d23_pipeline.client.retry import RetryPolicy
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.windows import Window

__all__ = [
    "CLOCK_SLACK",
    "ApiHostError",
    "AuthenticationError",
    "ClientStats",
    "CursorLoopError",
    "DatasetNotFoundError",
    "ExportsApiError",
    "ExportsClient",
    "GatewayDownError",
    "LenderMismatchError",
    "NotTheApiError",
    "ProtocolError",
    "Recount",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SliceDone",
    "SliceEvent",
    "SlicePage",
    "SliceProof",
    "SliceRestart",
    "Window",
    "WindowTotal",
    "WindowTooHeavyError",
]
