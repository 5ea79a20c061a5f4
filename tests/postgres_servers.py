"""The PostgreSQL servers the suite starts: the session's server and those of the tests that stop
or kill their own (the outage and chaos tests).

By default they are the embedded PostgreSQL 18 (the wheel the service itself uses). With
TEST_POSTGRES_BIN set to a directory of another build's server programs, for instance Debian's
`/usr/lib/postgresql/15/bin` (package postgresql-15), each is a throwaway cluster of that build
instead: initdb into a temporary directory, served on a Unix socket only, run as the `postgres`
user when the suite runs as root (PostgreSQL refuses to run as root). That is how CI runs the
whole suite on a second major version (`make test-pg15`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from service.db.embedded import EmbeddedPostgres, bundled_binary

POSTGRES_BIN_ENV = "TEST_POSTGRES_BIN"


def postgres_bin() -> Path | None:
    """The server programs TEST_POSTGRES_BIN names, or None for the embedded server."""
    value = os.environ.get(POSTGRES_BIN_ENV, "").strip()
    if not value:
        return None
    path = Path(value)
    if not (path / "postgres").is_file():
        raise RuntimeError(f"{POSTGRES_BIN_ENV}={value}: no postgres program there")
    return path


def server_for_tests(data_dir: Path) -> EmbeddedPostgres | ClusterServer:
    """A server of the build this run tests, keeping its data under `data_dir` (embedded) or in
    a temporary directory of its own (a cluster of TEST_POSTGRES_BIN)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        return EmbeddedPostgres(data_dir)
    return ClusterServer(bin_dir)


def client_program(name: str) -> Path:
    """A client program (pg_dump, psql) of the build under test: a pg_dump of one major version
    misreads another's catalogs (pg_dump 18 invents column options on a 15 server)."""
    bin_dir = postgres_bin()
    return bundled_binary(name) if bin_dir is None else bin_dir / name


class ClusterServer:
    """A throwaway cluster of an installed PostgreSQL build, on a Unix socket of its own."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="imagejobs-pg-"))
        self.pgdata = self.root / "data"
        self.log = self.root / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        self._initialised = False
        atexit.register(self.close)

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bin_dir / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        # Fixed programs of the build under test, arguments of this class's own making.
        return subprocess.run(  # noqa: S603
            command, check=True, capture_output=True, text=True
        ).stdout

    def _initdb(self) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (self.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n")
        self._initialised = True

    def start(self) -> str:
        """Starts the server (initdb on first use) and returns a DSN over its socket."""
        if not self._initialised:
            self._initdb()
        if not self.is_running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "start")
        return self.dsn()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def stop(self, *, mode: str = "fast") -> None:
        if self._initialised and self.is_running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def close(self) -> None:
        """Stops the server and deletes the cluster."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)

    def sql(self, statement: str, *, database: str = "postgres") -> str:
        return self._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(database),
                         "-c", statement)  # fmt: skip
