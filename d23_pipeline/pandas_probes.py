"""Keeps pandas out of the pipeline's runs: DuckDB and pyarrow import it only to probe.

Both libraries import pandas on their own, only to ask whether a value is a pandas object:
DuckDB for every bound query parameter (it compares the value with ``pandas.NaT``:
``GetPythonObjectType`` in duckdb-python 1.5.5), pyarrow on its first conversion of Python
values (it then keeps the answer for the process). The pipeline hands neither a pandas object,
yet that import cost every run ~32 MB (benchmarks/README.md). Within :func:`pandas_probes_refused`
``import pandas`` fails as if pandas were not installed, and so the answer is "not pandas". The
refusal is a context variable: it holds in the calling thread and in the threads the client
starts for it (``d23_pipeline.client.fanout.in_callers_context``). Other threads are untouched,
and so is code that imports pandas itself (``analytics/frames.py``): once pandas is imported,
DuckDB's probes find it as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.machinery import ModuleSpec
from types import ModuleType

_REFUSING: ContextVar[bool] = ContextVar("d23_pandas_refused", default=False)


class _RefusePandas:
    """A meta path finder that fails ``import pandas`` where the refusal holds."""

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" and _REFUSING.get():
            raise ModuleNotFoundError("pandas is refused to a library's type probe", name=name)
        return None  # the next finder looks for the module


_FINDER = _RefusePandas()


@contextmanager
def pandas_probes_refused() -> Iterator[None]:
    """Within the block, imports of pandas fail (unless it is already imported).

    A month's landing runs within it: pyarrow's first conversion there, if any (a month with no
    rows makes none, and loads no pyarrow), answers "no pandas" for the process. So only the run
    that lands a month gives pyarrow that answer; a notebook that imports the pipeline's modules
    keeps pyarrow's pandas conversions (with "no" it no longer recognises pandas objects: a
    nullable Series fails to convert), and a process that imported pandas first keeps them anyway.
    """
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    token = _REFUSING.set(True)
    try:
        yield
    finally:
        _REFUSING.reset(token)
