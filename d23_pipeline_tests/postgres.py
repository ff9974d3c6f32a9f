"""A throwaway PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

It listens on 127.0.0.1 only, on a free port, with its Unix socket inside that folder, and is
stopped and deleted afterwards. PostgreSQL refuses to run as root, so under root (CI) the server
runs as the unprivileged ``postgres`` user that Debian's ``postgresql`` package creates. ``make
test`` installs that package when the server binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from processes import free_port

SERVICE_USER = "postgres"
SUPERUSER = "d23_test"
DATABASE = "dagster"


def server_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live: on PATH, else Debian's newest /usr/lib/postgresql/N."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs them "
            "(apt-get install postgresql), or install your distribution's PostgreSQL server"
        )
    return versions[-1].parent


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster and the credentials of its superuser."""

    port: int
    password: str
    folder: Path
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    database: str = DATABASE

    def dagster_env(self) -> dict[str, str]:
        """The variables d23_pipeline/deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.database,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def new_database(self) -> str:
        """A fresh, empty database of its own on this cluster (a DuckLake's catalog); its libpq
        connection string."""
        database = f"lake_{uuid.uuid4().hex[:12]}"
        self.administer(f"CREATE DATABASE {database}")
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={database}"
        )

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        """A new connection over TCP with the password, as Dagster connects."""
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
        )

    def administer(self, statement: str, params: Sequence[object] | None = None) -> None:
        """Run one statement as the superuser, outside a transaction, as CREATE DATABASE must
        be; with ``params``, its ``%s`` placeholders take them (without, a ``%`` is itself)."""
        with contextlib.closing(self.connect("postgres")) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(statement, params)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Rows of one statement (``%s`` placeholders) in the Dagster database."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


def _as_service_user(args: Sequence[str]) -> list[str]:
    # runuser keeps the environment and needs no password; a non-root user runs the server as
    # itself, which PostgreSQL accepts.
    return ["runuser", "-u", SERVICE_USER, "--", *args] if os.geteuid() == 0 else list(args)


def _run(args: Sequence[str], log: Path) -> None:
    result = subprocess.run(
        _as_service_user(args), capture_output=True, text=True, timeout=120, cwd=log.parent
    )
    if result.returncode != 0:
        server_log = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}{server_log}"
        )


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresServer]:
    """Start a fresh cluster with database ``dagster``; stop it and delete its files on exit."""
    bindir = server_bindir()
    pg_ctl = str(bindir / "pg_ctl")
    # Not under pytest's tmp_path: that folder is private to root, and the server runs as
    # `postgres`, which must be able to reach its data directory.
    folder = Path(tempfile.mkdtemp(prefix="d23-postgres-"))
    data = folder / "data"
    log = folder / "server.log"
    try:
        owner = pwd.getpwnam(SERVICE_USER) if os.geteuid() == 0 else None
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        password = secrets.token_urlsafe(24)
        pwfile = folder / "pwfile"
        with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        _run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # A throwaway cluster: skipping fsync saves seconds and risks nothing.
                "--no-sync",
            ],
            log,
        )
        pwfile.unlink()
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={folder} -c fsync=off -c full_page_writes=off"
        )
        _run([pg_ctl, "--pgdata", str(data), "--log", str(log), "-o", options, "-w", "start"], log)
        server = PostgresServer(port=port, password=password, folder=folder)
        server.administer(f"CREATE DATABASE {DATABASE}")
        yield server
        _run([pg_ctl, "--pgdata", str(data), "-m", "fast", "-w", "stop"], log)
    finally:
        # After a failure the server may still be up; it must not outlive the test run.
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_service_user([pg_ctl, "--pgdata", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                cwd=folder,
            )
        shutil.rmtree(folder, ignore_errors=True)
