"""Keeps pandas out of the pipeline's runs: DuckDB and pyarrow import it only to probe.

Both libraries import pandas on their own, only to ask whether a value is a pandas object:
DuckDB for every bound query parameter (it compares the value with ``pandas.NaT``:
``GetPythonObjectType`` in duckdb-python 1.5.5), pyarrow on its first conversion of Python
values (it then keeps the answer for the process). The pipeline hands neither a pandas object,
yet that import cost every run ~32 MB (benchmarks/README.md). Within :func:`pandas_probes_refused`
the calling thread's ``import pandas`` fails as if pandas were not installed, and so the answer
is "not pandas". Other threads are untouched, and so is code that imports pandas itself
(``analytics/frames.py``): once pandas is imported, DuckDB's probes find it as usual.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType

import pyarrow as pa

_refusing = threading.local()


class _RefusePandas:
    """A meta path finder that fails ``import pandas`` while its thread refuses it."""

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" and getattr(_refusing, "on", False):
            raise ModuleNotFoundError("pandas is refused to a library's type probe", name=name)
        return None  # the next finder looks for the module


_FINDER = _RefusePandas()


@contextmanager
def pandas_probes_refused() -> Iterator[None]:
    """Within the block, this thread's imports of pandas fail (unless it is already imported)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    before = getattr(_refusing, "on", False)
    _refusing.on = True
    try:
        yield
    finally:
        _refusing.on = before


def answer_pyarrows_pandas_probe() -> None:
    """Have pyarrow settle, unless it already has, that this process has no pandas.

    pyarrow keeps its answer for the process, and with "no" it no longer recognises pandas
    objects it is handed (a nullable Series fails to convert). So only a month's landing asks,
    in the run that lands it; a notebook that imports the pipeline's modules keeps pyarrow's
    pandas conversions, and a process that imported pandas first keeps them anyway.
    """
    with pandas_probes_refused():
        pa.array([])
