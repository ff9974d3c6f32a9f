"""Product settings, read from ``D23_*`` environment variables and validated up front.

Every problem is reported as a :class:`SettingsError` that names the variable, so a typo in a
deployment fails at load or at run start instead of half-way through a backfill.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from d23_pipeline.months import is_month, month_index, month_of


class SettingsError(ValueError):
    """A ``D23_*`` setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class LoginCredentials:
    """Email/password login; the lender public id comes from the login answer."""

    lender: str
    email: str
    password: str

    def __repr__(self) -> str:  # never let the password reach a log line
        return f"LoginCredentials(lender={self.lender!r}, email={self.email!r}, password=***)"


def is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text that UTF-8 can hold."""
    # JSON may escape half of a surrogate pair (what JavaScript emits for a cut emoji), and an
    # environment variable's byte that is not UTF-8 reaches Python as one: no Unicode character,
    # which UTF-8 (Arrow, Parquet, DuckDB, an HTTP body, libpq) cannot hold.
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def fits_a_header(token: str) -> bool:
    """Whether ``token`` can travel in an HTTP header: printable ASCII. Anything else (a
    typographic quote pasted with it) would fail inside httpx, in an error holding the header."""
    # h11 also refuses a header value that ends in a space, quoting the whole value.
    return token.isascii() and token.isprintable() and token == token.strip()


def is_uuid(value: str) -> bool:
    """The contract's ``lenderPublicId``: a UUID in any form Python reads (hex digits, with or
    without hyphens or braces), which holds nothing a path or log line needs escaped from."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_UUID_CHARACTERS = re.compile(r"[0-9A-Fa-f{}-]*")


def _shown_if_uuid_typo(value: str) -> str:
    # Handed over together, the id and the token are easily pasted the wrong way round: a
    # value that is no mistyped UUID may be the token, so only its length is shown.
    if _UUID_CHARACTERS.fullmatch(value):
        return repr(value[:40])
    return f"{len(value)} characters that are not all hex digits and hyphens, not shown: the token?"


@dataclass(frozen=True)
class TokenCredentials:
    """A bearer token already held for one lender."""

    lender_public_id: str
    token: str

    def __post_init__(self) -> None:
        if not is_uuid(self.lender_public_id):  # it goes into every path and log line
            raise SettingsError(
                "D23_LENDER_PUBLIC_ID must be the lender's public id, a UUID "
                f"(got {_shown_if_uuid_typo(self.lender_public_id)})"
            )
        if not fits_a_header(self.token):
            raise SettingsError(
                "D23_TOKEN holds a character an HTTP header cannot carry (only printable ASCII "
                "can): copy the token again"
            )
        # Copied with the header's scheme, it would be sent as "Bearer Bearer ..." and its 401
        # blamed on an expired token.
        if self.token[:7].lower() == "bearer ":
            raise SettingsError(
                "D23_TOKEN starts with 'Bearer ': paste the token without that prefix (the "
                "client adds it)"
            )

    def __repr__(self) -> str:
        return f"TokenCredentials(lender_public_id={self.lender_public_id!r}, token=***)"


Credentials = LoginCredentials | TokenCredentials

DEFAULT_START_MONTH = "2026-01"
DEFAULT_PAGE_LIMIT = 500
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_SLICE_HOURS = 24
# The values each of these takes, from its D23_* variable or from a run's resource config (the
# launchpad's): (lowest, highest).
PAGE_LIMIT_RANGE = (1, 1000)
MAX_CONCURRENCY_RANGE = (1, 32)
SLICE_HOURS_RANGE = (1, 24 * 31)
# A merge that would mark more than this share of a month's live rows deleted marks none until
# an operator confirms: a source losing that much at once is more often a fault than the truth.
DEFAULT_MAX_DELETION_SHARE = 0.02
# Where the warehouse lives: the embedded DuckDB file (default) or DuckLake, Parquet files under
# D23_DUCKLAKE_DATA_PATH with its catalog in the PostgreSQL database D23_WAREHOUSE_DSN names.
WAREHOUSE_BACKENDS = ("duckdb", "ducklake")

# The defaults below are resource config, not D23_* variables. Their home is here rather than
# beside the code they tune (warehouse/store.py, landing/snapshot.py, client/retry.py) so that the
# resources show them without importing DuckDB, Arrow or httpx when the definitions load.

# How long a warehouse connection waits for another process to finish with the file.
LOCK_TIMEOUT_S = 900.0
# DuckDB's own default lets one query take 80 % of the machine's RAM: merging a 5M-row month
# then held 800 MB. Past this limit DuckDB spills to the temp directory instead, so a run's peak
# stays flat in the month's size (at some speed: see benchmarks/README.md). 48 MB holds every
# step of a month's first read at 5M rows (it is inserted) and of a 1M-row month's read again;
# 96 MB held ~50 MB more at 1M and 5M rows. Not everything spills: the merge's join of a
# 5M-row month with d23.logs ran out of memory within 48 MB whole, so it is joined in parts of
# ~1M rows (store.MERGE_PART_ROWS); a merge that still runs out is merged again within twice
# the limit, then without one (merge_within_memory_limit).
DEFAULT_MEMORY_LIMIT = "48MB"
# A size as DuckDB's memory_limit reads one: 1000^i (KB..TB) or 1024^i (KiB..TiB) bytes.
MEMORY_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)B", re.IGNORECASE)
# Below it DuckDB cannot hold a block to read a month's files into (8 MB ran out of memory).
MIN_MEMORY_LIMIT_BYTES = 16 * 10**6
# Where in D23_DATA_DIR the raw snapshots and the dashboard go.
RAW_FOLDER = "raw"
DASHBOARD_FILE = Path("reports") / "outcome_dashboard.html"
# An unfinished snapshot older than this is read again rather than resumed: its slices are stale.
RESUME_MAX_AGE = timedelta(hours=24)
# The client's retries of one request (RetryPolicy): attempts, the first one included, and the
# ceiling of the jittered pause before the first retry, which doubles with each retry.
DEFAULT_RETRY_MAX_ATTEMPTS = 6
DEFAULT_RETRY_BASE_DELAY_S = 0.5


@dataclass(frozen=True)
class PipelineOptions:
    """Settings without secrets, read when the definitions load."""

    data_dir: Path
    start_month: str
    page_limit: int
    max_concurrency: int
    slice_hours: int
    refresh_hour_utc: int
    refresh_lookback_months: int
    outcome_mapping: Path | None
    max_deletion_share: float
    report_timezone: str
    warehouse: str = "duckdb"
    # A local folder (made absolute) or, not run here, an object-storage URL such as s3://...
    ducklake_data_path: str | None = None

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / RAW_FOLDER

    @property
    def dashboard_path(self) -> Path:
        return self.data_dir / DASHBOARD_FILE


@dataclass(frozen=True)
class ApiConnection:
    """Where the Exports API is and how to authenticate; read at run start."""

    api_url: str
    credentials: Credentials


def validate_api_url(value: str, name: str = "D23_API_URL") -> str:
    """Accept ``https://host`` anywhere and ``http://`` only on loopback; return it without a
    trailing slash."""
    # Values from env files often carry a trailing newline, which would end up inside every URL.
    value = value.strip()
    try:
        parts = urlsplit(value)
    except ValueError:  # urlsplit's message quotes the host part, password and all
        raise SettingsError(
            f"{name} is not a valid URL (check brackets, which must hold an IPv6 address, and "
            "unusual characters in the host)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"{name} must be an http(s) URL such as https://stage-v3-api.cleargrid.ai"
        )
    if not value.isprintable():
        raise SettingsError(f"{name} holds a character that does not print (a tab, say): retype it")
    if not _is_idna(parts.hostname):
        raise SettingsError(f"{name} has a host name that is not valid IDNA ({parts.hostname})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise SettingsError(
            f"{name} uses plain http:// for a non-loopback host ({parts.hostname}); use https://"
        )
    # User info would travel as credentials and show up wherever the URL is printed; a fragment
    # would swallow every path appended to the root.
    if parts.path not in ("", "/") or "?" in value or "#" in value or "@" in parts.netloc:
        raise SettingsError(
            f"{name} must be the host root only, without a path, query, fragment or user info"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise SettingsError(f"{name} has an invalid port")
    return value.rstrip("/")


def _is_idna(host: str) -> bool:
    # The check the HTTP client makes of a host's punycode (xn--) labels, or of a host written
    # in other scripts, when a run first uses it.
    if host.isascii() and "xn--" not in host:
        return True
    import idna  # httpx's own IDNA library, on every run's path anyway

    try:
        if host.isascii():
            idna.decode(host)
        else:
            idna.encode(host)
    except (idna.IDNAError, UnicodeError):
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_month(value: str, name: str = "D23_START_MONTH") -> str:
    if not is_month(value):
        raise SettingsError(
            f"{name} must be a month, YYYY-MM with MM from 01 to 12 (got {value!r})"
        )
    if not 1970 <= int(value[:4]) <= 2999:  # Dagster's partitions are Unix timestamps
        raise SettingsError(f"{name} must be a month from 1970 to 2999 (got {value!r})")
    return value


def _start_month(env: Mapping[str, str]) -> str:
    month = validate_month(env.get("D23_START_MONTH", "").strip() or DEFAULT_START_MONTH)
    # Dagster would still offer a month that has not begun as the one partition (a month
    # later, none), and a read of it lands an empty month as complete.
    current = month_of(datetime.now(UTC))
    if month_index(month) > month_index(current):
        raise SettingsError(
            f"D23_START_MONTH {month} has not begun: use a month up to the current one ({current})"
        )
    return month


def validate_timezone(value: str, name: str = "D23_REPORT_TIMEZONE") -> str:
    """An IANA time zone name such as ``Europe/Berlin``."""
    # The zone database's names, not any file ZoneInfo opens: 'localtime', 'posixrules',
    # 'posix/...' and 'right/...' are files DuckDB, where the report runs, does not know.
    if value == "localtime" or value not in available_timezones():
        raise SettingsError(
            f"{name} must be an IANA time zone name such as Asia/Kolkata (got {value!r})"
        )
    return value


def validate_warehouse(env: Mapping[str, str]) -> tuple[str, str | None]:
    """``D23_WAREHOUSE`` and, for DuckLake, its data path; the DSN (a secret) is only checked
    to be set here, and reaches the resource as an ``EnvVar``."""
    backend = env.get("D23_WAREHOUSE", "").strip().lower() or "duckdb"
    if backend == "postgres":
        raise SettingsError(
            "D23_WAREHOUSE=postgres is not built: the server-backed warehouse is DuckLake on a "
            "PostgreSQL catalog (D23_WAREHOUSE=ducklake)"
        )
    if backend not in WAREHOUSE_BACKENDS:
        raise SettingsError(f"D23_WAREHOUSE must be duckdb or ducklake (got {backend!r})")
    if backend == "duckdb":
        # Left from a DuckLake setup (or D23_WAREHOUSE mistyped away), they would be ignored:
        # every host would write a DuckDB file of its own while its operator expected one lake.
        lake_only = [
            name
            for name in ("D23_WAREHOUSE_DSN", "D23_DUCKLAKE_DATA_PATH")
            if env.get(name, "").strip()
        ]
        if lake_only:
            raise SettingsError(
                f"{' and '.join(lake_only)} {'are' if len(lake_only) > 1 else 'is'} set, but "
                "D23_WAREHOUSE is duckdb (or unset), which does not use "
                f"{'them' if len(lake_only) > 1 else 'it'}: set D23_WAREHOUSE=ducklake, or "
                f"unset {' and '.join(lake_only)}"
            )
        return backend, None
    _refuse_bytes_not_text(env, "D23_WAREHOUSE_DSN")
    if not env.get("D23_WAREHOUSE_DSN", "").strip():
        raise SettingsError(
            "D23_WAREHOUSE_DSN is not set: D23_WAREHOUSE=ducklake needs the PostgreSQL "
            "connection string of its catalog, e.g. 'host=db port=5432 dbname=d23 user=d23 "
            "password=...'"
        )
    data_path = env.get("D23_DUCKLAKE_DATA_PATH", "").strip()
    if not data_path:
        raise SettingsError(
            "D23_DUCKLAKE_DATA_PATH is not set: D23_WAREHOUSE=ducklake needs the folder its "
            "Parquet files go to, the same for every process"
        )
    if "://" in data_path:
        object_store(data_path, env)
        return backend, data_path
    return backend, str(writable_folder("D23_DUCKLAKE_DATA_PATH", data_path).resolve())


# S3's rule for a bucket's name (dots allowed, as in older buckets).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class ObjectStore:
    """Where an ``s3://`` data path's bucket is served: AWS S3 (``endpoint`` None) or an
    S3-compatible store (MinIO, Cloudflare R2, ...) at ``endpoint``, ``host[:port]``. Credentials
    are not here: DuckDB's aws extension reads them from the AWS SDK's own chain."""

    bucket: str
    endpoint: str | None = None
    use_ssl: bool = True
    region: str | None = None


def object_store(data_path: str, env: Mapping[str, str]) -> ObjectStore:
    """The object store of DuckLake's ``data_path`` (a URL), endpoint and region from the AWS
    SDK's variables (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``); a URL or endpoint this cannot use is a :class:`SettingsError`."""
    scheme, _, rest = data_path.partition("://")
    if scheme != "s3":
        # DuckDB takes only a lower-case s3:// for the bucket: S3://... would be a local folder,
        # and the lake's catalog would keep that path for good.
        raise SettingsError(
            "D23_DUCKLAKE_DATA_PATH must be a local folder or an s3:// URL in lower case, on AWS "
            f"S3 or a store with its API such as MinIO (got a {scheme}:// URL)"
        )
    # Not shown: what precedes an '@' may be a key, and DuckDB takes a query's s3_* parameters
    # (s3_secret_access_key=...) as the store's keys. A '#' is a key's character here.
    if held := next((c for c in "@?" if c in rest), None):
        raise SettingsError(
            f"D23_DUCKLAKE_DATA_PATH holds {'an' if held == '@' else 'a'} {held!r}: give "
            "s3://<bucket>/<folder> alone, and the keys as AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    bucket = rest.split("/", 1)[0]
    if not _BUCKET.fullmatch(bucket):
        raise SettingsError(
            f"D23_DUCKLAKE_DATA_PATH {data_path!r} names no S3 bucket (3 to 63 lower-case "
            "letters, digits, '.' and '-'): s3://<bucket>/<folder>"
        )
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    name = (
        "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3", "").strip() else "AWS_ENDPOINT_URL"
    )
    endpoint = env.get(name, "").strip()
    if not endpoint:
        return ObjectStore(bucket, region=region or None)
    if held := next((c for c in "@?#" if c in endpoint), None):  # not shown, as above
        raise SettingsError(
            f"{name} holds {'an' if held == '@' else 'a'} {held!r}: give the store's address "
            "alone, http(s)://host[:port], and the keys as AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    url = urlsplit(endpoint)
    shape = url.path.strip("/") or url.query or url.fragment
    if url.scheme.lower() not in ("http", "https") or not url.hostname or shape:
        raise SettingsError(
            f"{name} must be the store's address, http(s)://host[:port] (got {endpoint!r})"
        )
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    try:
        port = url.port
    except ValueError:
        raise SettingsError(f"{name} has no valid port number (got {endpoint!r})") from None
    if port is not None:
        host = f"{host}:{port}"
    use_ssl = url.scheme.lower() == "https"
    return ObjectStore(bucket, endpoint=host, use_ssl=use_ssl, region=region or None)


# ASCII digits only: int() and float() would also take other scripts' digits and underscores
# ('１０', '1_000', '1_0e-1' is 1.0). At most 9 digits: a longer one is a typo, and int()
# refuses past 4,300 in an error that names no setting.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,9}")
_DECIMAL = re.compile(r"[+]?([0-9]{1,9}(\.[0-9]{0,9})?|\.[0-9]{1,9})([eE][+-]?[0-9]{1,3})?")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise SettingsError(f"{name} must be a whole number (got {raw[:40]!r})")
    value = int(raw)
    check_between(name, value, low, high)
    return value


def check_between(name: str, value: float, low: float, high: float | None = None) -> None:
    """A SettingsError naming ``name`` unless ``low <= value <= high`` (no ``high``: no ceiling)."""
    if not (low <= value and (high is None or value <= high)):  # written so that NaN fails
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise SettingsError(f"{name} must be {bound} (got {value})")


def read_api_limits(env: Mapping[str, str]) -> dict[str, int]:
    """``D23_PAGE_LIMIT``, ``D23_MAX_CONCURRENCY`` and ``D23_SLICE_HOURS``, by the name of the
    resource field each sets."""
    return {
        "page_limit": _int(env, "D23_PAGE_LIMIT", DEFAULT_PAGE_LIMIT, *PAGE_LIMIT_RANGE),
        "max_concurrency": _int(
            env, "D23_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY, *MAX_CONCURRENCY_RANGE
        ),
        "slice_hours": _int(env, "D23_SLICE_HOURS", DEFAULT_SLICE_HOURS, *SLICE_HOURS_RANGE),
    }


def read_pool_limits(env: Mapping[str, str]) -> dict[str, int]:
    """Each Dagster pool's limit: months downloading at once (``d23_api``), and warehouse steps
    at once (``d23_warehouse``: one, as the DuckDB file has one writer; a DuckLake takes more)."""
    return {
        "d23_api": _int(env, "D23_API_POOL_LIMIT", 2, 1, 64),
        "d23_warehouse": _int(env, "D23_WAREHOUSE_POOL_LIMIT", 1, 1, 64),
    }


def read_local_ports(env: Mapping[str, str]) -> tuple[int, int]:
    """``make run``'s loopback ports: the UI's (:func:`read_ui_port`) and the bundled
    simulator's (``D23_SIMULATOR_PORT``, default 8023)."""
    return read_ui_port(env), _int(env, "D23_SIMULATOR_PORT", 8023, 1, 65535)


def read_ui_port(env: Mapping[str, str]) -> int:
    """The port of ``make run``'s Dagster UI on 127.0.0.1 (``D23_UI_PORT``, default 3000)."""
    return _int(env, "D23_UI_PORT", 3000, 1, 65535)


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _DECIMAL.fullmatch(raw):
        raise SettingsError(f"{name} must be a number between 0 and 1 (got {raw[:40]!r})")
    value = float(raw)
    check_between(name, value, 0, 1)
    return value


_CREDENTIAL_VARIABLES = (
    "D23_LENDER",
    "D23_EMAIL",
    "D23_PASSWORD",
    "D23_LENDER_PUBLIC_ID",
    "D23_TOKEN",
)


def _refuse_bytes_not_text(env: Mapping[str, str], name: str) -> None:
    # Sent as it is, such a value fails in the JSON or libpq encoder, in an error that quotes
    # the login body or the DSN around it, password included.
    if not is_text(env.get(name, "")):
        raise SettingsError(
            f"{name} holds bytes that are not UTF-8 text (a file saved in another encoding?); "
            "its value is not shown"
        )


def read_credentials(env: Mapping[str, str]) -> Credentials:
    """Pick the login flow or the held-token flow, refusing a half-configured mix."""
    for name in _CREDENTIAL_VARIABLES:
        _refuse_bytes_not_text(env, name)
    login = {n: env.get(n, "").strip() for n in ("D23_LENDER", "D23_EMAIL", "D23_PASSWORD")}
    # A password may begin or end with a space: sent as given but for the line break a secret
    # mounted from a file ends with; only a blank one is missing.
    password = env.get("D23_PASSWORD", "").rstrip("\r\n") if login["D23_PASSWORD"] else ""
    token = {n: env.get(n, "").strip() for n in ("D23_LENDER_PUBLIC_ID", "D23_TOKEN")}
    # Either flow alone: with both set, one would be used silently and a failure of it would
    # point at the variables of the other.
    if any(login.values()) and token["D23_TOKEN"]:
        raise SettingsError(
            "both a token (D23_LENDER_PUBLIC_ID, D23_TOKEN) and login credentials (D23_LENDER, "
            "D23_EMAIL, D23_PASSWORD) are set: unset one group"
        )
    if any(login.values()) and token["D23_LENDER_PUBLIC_ID"]:
        raise SettingsError(
            "D23_LENDER_PUBLIC_ID is set beside login credentials (D23_LENDER, D23_EMAIL, "
            "D23_PASSWORD), which take the lender public id from the login answer: unset it to "
            "log in, or supply D23_TOKEN (and unset those) to use a token already held"
        )
    if any(token.values()):
        missing = [n for n, v in token.items() if not v]
        if missing:
            raise SettingsError(f"{missing[0]} is required when using token auth (D23_TOKEN)")
        return TokenCredentials(token["D23_LENDER_PUBLIC_ID"], token["D23_TOKEN"])
    missing = [n for n, v in login.items() if not v]
    if missing:
        raise SettingsError(
            f"{missing[0]} is not set: configure D23_LENDER, D23_EMAIL and D23_PASSWORD "
            "(login) or D23_LENDER_PUBLIC_ID and D23_TOKEN (a token already held)"
        )
    return LoginCredentials(login["D23_LENDER"], login["D23_EMAIL"], password)


def local_path(name: str, value: str) -> Path:
    """The path setting ``name``, a leading ``~`` expanded: an env file, a quoted value or a
    supervisor pass it on unexpanded, and it would make a folder named ``~``."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~someone, and no such user
        raise SettingsError(
            f"{name} starts with {value.split('/', 1)[0]!r}, a home folder this machine does not "
            "know: write the path out in full"
        ) from None


def read_data_dir(env: Mapping[str, str]) -> Path:
    """``D23_DATA_DIR`` (default ``data``), as :func:`writable_folder` checks it."""
    return writable_folder("D23_DATA_DIR", env.get("D23_DATA_DIR", "").strip() or "data")


def writable_folder(name: str, value: str) -> Path:
    """The folder setting ``name``, refused if it, or the nearest part of it that exists, is not
    a folder this user can write in: the runs would create theirs in it only after the API was
    read (and DuckLake records its data path in the catalog at the first run)."""
    path = local_path(name, value)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SettingsError(f"{name} points to {value!r}, but {str(existing)!r} is not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(
            f"{name} points to {value!r}, but this user cannot write in {str(existing)!r}"
        )
    return path


# What a folder's permissions, mount or path refuse: a setting to change, not a fault to retry.
_FOLDER_REFUSALS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST}
)


def refused_folder(folder: Path) -> OSError | None:
    """Why this user cannot make ``folder`` and write a file in it, or None. Tried, not asked:
    root passes every access() check, also where nothing can be made (/proc, /sys). Any other
    error (a full disk, too many open files) is raised: no setting mends it, a retry may."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        if exc.errno in _FOLDER_REFUSALS:
            return exc
        raise
    return None


def validate_memory_limit(value: str, name: str) -> str:
    """A memory limit DuckDB reads (``48MB``, ``1.5GB``, ``512MiB``) of at least 16 MB; else a
    SettingsError naming the forms, before a run downloads a month only to fail at its merge."""
    size = MEMORY_SIZE.fullmatch(value.strip())
    if size is None:
        raise SettingsError(
            f"{name} {value!r} is not a size DuckDB reads: a number and KB, MB, GB or TB (powers "
            "of 1000) or KiB, MiB, GiB or TiB (powers of 1024), such as 48MB"
        )
    number, prefix, binary = float(size[1]), size[2].upper(), size[3]
    if number * (1024 if binary else 1000) ** ("KMGT".index(prefix) + 1) < MIN_MEMORY_LIMIT_BYTES:
        raise SettingsError(
            f"{name} {value!r} is below 16MB, too little for DuckDB to read a month"
        )
    return value


def read_report_timezone(env: Mapping[str, str]) -> str:
    """``D23_REPORT_TIMEZONE`` (default UTC)."""
    return validate_timezone(env.get("D23_REPORT_TIMEZONE", "").strip() or "UTC")


def read_warehouse_database(env: Mapping[str, str]) -> str:
    """The embedded DuckDB file's path as ``D23_DATA_DIR`` sets it."""
    return str((read_data_dir(env) / "warehouse.duckdb").resolve())


def read_max_deletion_share(env: Mapping[str, str]) -> float:
    """``D23_MAX_DELETION_SHARE``."""
    return _share(env, "D23_MAX_DELETION_SHARE", DEFAULT_MAX_DELETION_SHARE)


def load_options(env: Mapping[str, str] | None = None) -> PipelineOptions:
    """Read and validate the non-secret ``D23_*`` settings."""
    env = os.environ if env is None else env
    mapping = env.get("D23_OUTCOME_MAPPING", "").strip()
    warehouse, ducklake_data_path = validate_warehouse(env)
    if mapping and not local_path("D23_OUTCOME_MAPPING", mapping).is_file():
        raise SettingsError(f"D23_OUTCOME_MAPPING points to {mapping!r}, which is not a file")
    return PipelineOptions(
        data_dir=read_data_dir(env),
        start_month=_start_month(env),
        **read_api_limits(env),
        refresh_hour_utc=_int(env, "D23_REFRESH_HOUR_UTC", 3, 0, 23),
        # At least 1: with none, the rows a month gets after its last refresh (on its last day,
        # after D23_REFRESH_HOUR_UTC) would never be read.
        refresh_lookback_months=_int(env, "D23_REFRESH_LOOKBACK_MONTHS", 2, 1, 24),
        # Absolute: a run's process may start in another folder than the code server's.
        outcome_mapping=local_path("D23_OUTCOME_MAPPING", mapping).resolve() if mapping else None,
        max_deletion_share=read_max_deletion_share(env),
        report_timezone=read_report_timezone(env),
        warehouse=warehouse,
        ducklake_data_path=ducklake_data_path,
    )


def load_api_connection(env: Mapping[str, str] | None = None) -> ApiConnection:
    """Read and validate the API URL and credentials."""
    env = os.environ if env is None else env
    api_url = env.get("D23_API_URL", "").strip()
    if not api_url:
        raise SettingsError("D23_API_URL is not set (e.g. https://stage-v3-api.cleargrid.ai)")
    return ApiConnection(validate_api_url(api_url), read_credentials(env))
