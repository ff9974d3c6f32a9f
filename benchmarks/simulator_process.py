"""The bundled simulator in its own process on loopback, as the benchmarks serve the API.

Standard library only: the end-to-end benchmark imports this from a process that must stay small
(see ``end_to_end``), so nothing here may pull in pyarrow, DuckDB or Dagster.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def simulator(rows: int, month: str, *options: str, said: list[str] | None = None) -> Iterator[str]:
    """``python -m d23_pipeline.simulator`` serving ``rows`` rows of ``month``; yields its URL.

    ``options`` are more command-line flags (``--latency-ms 100``, fault knobs). In its own
    process, like the real API: served from a thread of the reader, its page rendering would
    compete with the reader for the GIL. ``said``, if given, gets what it printed after its
    URL, once it has stopped (its answers by status).
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "d23_pipeline.simulator",
            "--port",
            "0",
            "--months",
            month,
            "--rows-per-month",
            str(rows),
            *options,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # The first line is printed once the month is generated and the socket listens.
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the simulator did not start (exit code {process.poll()})")
        yield url
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        if said is not None:
            said.append(out)
