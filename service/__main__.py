"""Command line: `python -m service serve | migrate | demo`, and the operators' commands
`jobs ...`, `webhooks ...` (service.cli) and `audit verify | export | keygen` (service.audit.cli)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys

from service.audit.cli import add_audit_commands
from service.cli import add_commands as add_ops_commands
from service.cli import run as run_ops
from service.config import ConfigError, Settings
from service.db.migrations import MigrationError, load_migrations
from service.db.queries import load_queries
from service.db.sql_files import SqlFilesError
from service.logs import configure_logging, get_logger

# The web app, the embedded server and tracing are imported by the commands that use them: an
# operator's `jobs`, `webhooks` or `audit` command starts in a fraction of the time.

#: aiohttp's own shutdown: how long open requests get once the listening socket is closed.
SHUTDOWN_TIMEOUT_S = 10.0


def resolve_dsn(settings: Settings) -> str:
    """DATABASE_URL when set, otherwise the embedded PostgreSQL under SERVICE_DATA_DIR."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from service.db.embedded import EmbeddedPostgres

    get_logger("service").info("embedded_postgres_starting", data_dir=str(settings.data_dir))
    return EmbeddedPostgres(settings.data_dir).start()


def _fast_event_loop() -> None:
    """uvloop when it is installed: the same asyncio API, several times faster networking."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings) -> int:
    """One process, or WEB_CONCURRENCY processes on one port (service.web.processes): the
    database is started and migrated once, here, before any of them."""
    from service.web.app import prepare_database
    from service.web.processes import supervise
    from service.web.shutdown import DRAIN_OVERHEAD_S

    _fast_event_loop()
    dsn = resolve_dsn(settings)
    log = get_logger("service")
    log.info(
        "service_starting",
        url=settings.base_url,
        auth_required=settings.auth_required,
        processes=settings.web_concurrency,
    )
    if settings.web_concurrency == 1:
        _serve_one(settings, dsn, migrate=True, reuse_port=False)
        return 0
    asyncio.run(prepare_database(dsn))
    # How long a child may take beyond SHUTDOWN_GRACE_S before the parent kills it: the drain's
    # bounded overhead (settling writes, releasing leases; 11 s at most, with the database
    # away), aiohttp's shutdown_timeout for open requests and the closing (the export of the
    # spans still queued included: tracing.SHUTDOWN_FLUSH_S at most).
    stop_margin_s = DRAIN_OVERHEAD_S + SHUTDOWN_TIMEOUT_S + 10.0
    return supervise(
        settings.web_concurrency,
        functools.partial(_serve_one, settings, dsn, migrate=False, reuse_port=True),
        stop_timeout_s=settings.shutdown_grace_s + stop_margin_s,
    )


def _serve_one(settings: Settings, dsn: str, *, migrate: bool, reuse_port: bool) -> None:
    from aiohttp import web

    from service import tracing
    from service.web.app import build_app

    # Tracing is set up in the process that serves (after the fork with WEB_CONCURRENCY), before
    # the app is built; the spans still queued are exported once the app has stopped.
    traced = tracing.setup(settings)
    # SIGTERM/SIGINT: the app drains its workers and releases their leases for up to
    # SHUTDOWN_GRACE_S (service.web.shutdown), then aiohttp's shutdown (shutdown_timeout).
    try:
        web.run_app(
            build_app(settings, dsn=dsn, migrate=migrate, handle_signals=True),
            host=settings.host,
            port=settings.port,
            reuse_port=reuse_port,
            print=None,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
    finally:
        if traced is not None:
            traced.shutdown()


def demo(settings: Settings) -> int:
    from service.demo import run_demo

    _fast_event_loop()
    asyncio.run(run_demo(settings, dsn=resolve_dsn(settings)))
    return 0


def migrate(settings: Settings) -> int:
    from service.web.app import prepare_database

    asyncio.run(prepare_database(resolve_dsn(settings)))
    get_logger("service").info("migrations_done")
    return 0


def audit(settings: Settings, args: argparse.Namespace) -> int:
    """`audit verify`: 0 when every chain and checkpoint holds, 1 naming what does not;
    `audit verify --file`: the same for an export, offline; `audit export`: JSON Lines of
    sealed events; `audit keygen`: prints a new AUDIT_SIGNING_KEY and its public key."""
    from service.audit.cli import export, keygen, verify, verify_file

    if args.audit_command == "keygen":
        return keygen()
    if args.audit_command == "export":
        return export(resolve_dsn(settings), args, pooled=settings.database_pooled)
    if args.file is not None:
        return verify_file(args.file)
    return asyncio.run(verify(resolve_dsn(settings), args, pooled=settings.database_pooled))


def check_sql_files() -> None:
    """Refuses to start without the migrations and the named queries (a broken installation)
    before anything else starts: never a silent "nothing to migrate" nor a later KeyError."""
    load_migrations()
    load_queries()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("serve", help="the service, configured by the environment")
    commands.add_parser("migrate", help="apply the migrations and exit")
    commands.add_parser("demo", help="what `make run` runs: the simulators and the service")
    add_audit_commands(commands)
    add_ops_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # Commands whose stdout is their answer (jobs, webhooks, audit export) log warnings and
    # errors only, unless LOG_LEVEL=debug asks for everything.
    printing = (
        args.command in ("jobs", "webhooks") or getattr(args, "audit_command", "") == "export"
    )
    level = "warning" if printing and settings.log_level != "debug" else settings.log_level
    configure_logging(level=level, fmt=settings.log_format)
    try:
        check_sql_files()
        if args.command == "audit":
            return audit(settings, args)
        if args.command in ("jobs", "webhooks"):
            return run_ops(resolve_dsn(settings), args, pooled=settings.database_pooled)
        return {"serve": serve, "migrate": migrate, "demo": demo}[args.command](settings)
    except (SqlFilesError, MigrationError) as exc:
        print(f"cannot {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
