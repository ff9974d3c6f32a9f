"""The statements that open the DuckLake warehouse; the tables' own SQL is sql.py's, unchanged.

``LOAD`` and ``ATTACH`` take no parameters, so their paths and the catalog's connection string
are quoted here as SQL string literals. That string never holds the catalog's password: DuckDB's
postgres driver prints it in every error it raises when it (re)connects, so the password goes
into a temporary secret, as a bound parameter, and the ``ATTACH`` names that secret.
"""

from collections.abc import Sequence
from pathlib import Path

# The catalog's name in the session; ``USE`` makes ``d23.logs`` resolve to it.
CATALOG = "d23_lake"
USE_CATALOG = f"USE {CATALOG}"
# A process's lake is one DuckDB instance, whose memory limit is global: each session sets the
# limit of the warehouse it was opened for (store.merge_within_memory_limit raises it), or the
# instance's own, read when it opened.
MEMORY_LIMIT = "SELECT current_setting('memory_limit')"
SET_MEMORY_LIMIT = "SET memory_limit = $limit"

# A DuckLake UPDATE holds about 100 bytes per row it changes outside DuckDB's memory limit: the
# statement's set of rows matched, and each data file's deleted rows (sorted, then copied again
# for every later statement of the transaction that deletes from the file). So a lake's month
# read again is merged in parts of rows (ducklake.LAKE_MERGE_PART_ROWS) into small files, and
# each part's Parquet writer buffers small row groups: with store.join_sides_as_written, a
# standalone 1M-row update grew the process by 61 MB, as on a DuckDB file, against 165 MB as
# one UPDATE into one file. A session setting: the lake's own target_file_size (for other tools'
# compaction) is left alone.
SET_TARGET_FILE_SIZE = "SET ducklake_target_file_size = $size"
ROW_GROUP_ROWS = (
    "SELECT value FROM ducklake_options($catalog) "
    "WHERE option_name = 'parquet_row_group_size' AND scope = 'GLOBAL'"
)
SET_ROW_GROUP_ROWS = f"CALL {CATALOG}.set_option('parquet_row_group_size', $rows)"

# The catalog's password, in this process's in-memory DuckDB only (TEMPORARY: never written to
# disk). duckdb_secrets() shows it as "redacted"; DuckDB's postgres driver passes it to libpq
# apart from the connection string, so its errors cannot print it.
CATALOG_SECRET = f"{CATALOG}_catalog_password"
CREATE_CATALOG_SECRET = (
    f"CREATE TEMPORARY SECRET {CATALOG_SECRET} (TYPE postgres, PASSWORD $password)"
)

# An s3:// data path's credentials: the AWS SDK's own chain (its variables, profile files, the
# instance's or pod's role), read inside DuckDB's aws extension, so that no key passes through
# this process's Python objects or messages; TEMPORARY and shown "redacted", as the catalog's.
# Scoped to the data path's bucket: other s3:// paths in a session get no credentials of ours.
STORAGE_SECRET = f"{CATALOG}_storage"
# Lists the data path (a missing bucket, a refused key or endpoint fails here, before a run reads
# the API, not at its first write).
LIST_DATA_PATH = "SELECT count(*) FROM glob($pattern)"


def create_storage_secret(options: Sequence[str]) -> str:
    """The temporary S3 secret of the lake's bucket; each of ``options`` (``scope``,
    ``refresh``, ``endpoint``, ``region``, ``url_style``, ``use_ssl``) is bound as the parameter
    of its name."""
    settings = "".join(f", {option.upper()} ${option}" for option in options)
    return (
        f"CREATE TEMPORARY SECRET {STORAGE_SECRET} (TYPE s3, PROVIDER credential_chain{settings})"
    )


# Run on a PostgreSQL session of the catalog's own (psycopg2), not through DuckDB: the session
# holds the writers' turn until it closes, which a crashed process's session does too.
WRITER_TURN_KEY = 0x64_32_33_74_75_72_6E  # "d23turn"; advisory locks are per database
TRY_WRITER_TURN = "SELECT pg_try_advisory_lock(%(key)s)"
SET_TURN_PATIENCE = "SELECT set_config('lock_timeout', %(patience)s, false)"
# A role's or database's timeouts must not end the turn early: statement_timeout would cancel the
# wait, idle_session_timeout (PostgreSQL 14+) end the session, and the turn with it, mid-write.
NO_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', '0', false)"
NO_IDLE_SESSION_TIMEOUT = "SELECT set_config('idle_session_timeout', '0', false)"
# A writer whose host dies or drops off the network sends no close: without these the server
# keeps its session, and the turn, until the OS's TCP keepalive gives up (about 2 h 11 min by
# default). With them, about a minute of silence ends it. Ignored over a Unix socket.
TURN_KEEPALIVES = (
    "SELECT set_config('tcp_keepalives_idle', '30', false), "
    "set_config('tcp_keepalives_interval', '10', false), "
    "set_config('tcp_keepalives_count', '3', false)"
)
# And data it sent that goes unacknowledged for a minute (PostgreSQL 12+).
TURN_USER_TIMEOUT = "SELECT set_config('tcp_user_timeout', '60000', false)"
WAIT_WRITER_TURN = "SELECT pg_advisory_lock(%(key)s)"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_extension(path: Path) -> str:
    """Load an extension from a file shipped in a Python package: never from the network."""
    return f"LOAD {_literal(str(path))}"


def attach(conninfo: str, data_path: str, *, password_secret: bool) -> str:
    """Attach the DuckLake whose catalog is the PostgreSQL database ``conninfo`` (a libpq
    connection string without its password), with the password of :data:`CREATE_CATALOG_SECRET`
    when ``password_secret``."""
    data = _literal(data_path.rstrip("/") + "/")
    options = f"DATA_PATH {data}"
    if password_secret:
        options += f", META_SECRET {_literal(CATALOG_SECRET)}"
    return f"ATTACH {_literal('ducklake:postgres:' + conninfo)} AS {CATALOG} ({options})"
