"""The throwaway PostgreSQL the production-instance tests run against (postgres.py)."""

import os
import pwd
import socket

import psycopg2
import pytest
from postgres import postgres_cluster


def test_cluster_is_loopback_only_unprivileged_password_protected_and_gone_afterwards() -> None:
    with postgres_cluster() as server:
        assert server.query("SHOW listen_addresses") == [("127.0.0.1",)]
        assert server.query("SELECT current_database()") == [("dagster",)]
        postmaster = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
        runs_as = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert os.stat(f"/proc/{postmaster}").st_uid == runs_as != 0
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(
                host=server.host, port=server.port, user=server.user, password="wrong"
            ).close()
        folder, port = server.folder, server.port
    assert not folder.exists()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
