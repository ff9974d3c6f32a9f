"""The statements that open the DuckLake warehouse; the tables' own SQL is sql.py's, unchanged.

``LOAD`` and ``ATTACH`` take no parameters, so their paths and the catalog's connection string
are quoted here as SQL string literals.
"""

from pathlib import Path

# The catalog's name in the session; ``USE`` makes ``d23.logs`` resolve to it.
CATALOG = "d23_lake"
USE_CATALOG = f"USE {CATALOG}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_extension(path: Path) -> str:
    """Load an extension from a file shipped in a Python package: never from the network."""
    return f"LOAD {_literal(str(path))}"


def attach(dsn: str, data_path: str) -> str:
    """Attach the DuckLake whose catalog is the PostgreSQL database ``dsn``."""
    data = _literal(data_path.rstrip("/") + "/")
    return f"ATTACH {_literal('ducklake:postgres:' + dsn)} AS {CATALOG} (DATA_PATH {data})"

