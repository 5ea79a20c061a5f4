"""The aiohttp application: wiring of the database, the store and the HTTP handlers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from schemas.jobs import PROVIDERS
from service.archive.archiver import OutputArchiver
from service.archive.fetch import OutputFetcher
from service.archive.storage import OutputStorage, S3Credentials, open_storage
from service.audit.sealer import Sealer
from service.audit.signing import CheckpointSigner
from service.config import Settings
from service.db.database import Database, connect
from service.db.migrations import apply_migrations
from service.errors import DatabaseUnavailable
from service.events.hub import (
    ARCHIVES_DUE_CHANNEL,
    EVENTS_CHANNEL,
    JOBS_DUE_CHANNEL,
    WEBHOOKS_DUE_CHANNEL,
    EventHub,
)
from service.logs import get_logger
from service.providers.registry import Providers, build_providers
from service.routing import Router
from service.store import JobStore
from service.store.archive import ArchiveQueue
from service.store.audit import AuditLog
from service.store.outbox import WebhookOutbox
from service.store.postgres import PostgresJobStore
from service.web.audit_api import AuditApi
from service.web.bodies import CALLBACK_BODY_LIMIT
from service.web.callbacks_api import CallbacksApi
from service.web.jobs_api import JobsApi
from service.web.middleware import error_middleware, request_context_middleware, token_middleware
from service.web.ops_api import OpsApi
from service.web.outputs_api import OutputsApi
from service.web.page_api import PageApi
from service.web.shutdown import GracefulShutdown, Worker
from service.web.stream_api import StreamApi
from service.webhooks.delivery import WebhookDeliverer
from service.workers.circuit import Circuits
from service.workers.runner import JobRunner
from service.workers.schedule import timings_from_settings


def runner_options_from(settings: Settings) -> dict[str, Any]:
    return {
        "timings": timings_from_settings(settings),
        "lease_seconds": settings.worker_lease_s,
        "concurrency_per_provider": settings.provider_concurrency,
        "max_concurrency_per_provider": settings.provider_concurrency_max,
    }


DATABASE_KEY = web.AppKey("database", Database)
STORE_KEY = web.AppKey("store", JobStore)
SETTINGS_KEY = web.AppKey("settings", Settings)
RUNNER_KEY = web.AppKey("runner", JobRunner)
HUB_KEY = web.AppKey("hub", EventHub)
SHUTDOWN_KEY = web.AppKey("shutdown", GracefulShutdown)


async def prepare_database(dsn: str, *, wait_seconds: float = 30.0) -> None:
    """Waits (bounded) for PostgreSQL to accept connections, then applies pending migrations."""
    log = get_logger("service.db")
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            conn = await connect(dsn)
            break
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            log.info("database_waiting", retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        applied = await apply_migrations(conn)
        if applied:
            log.info("migrations_applied", versions=[m.version for m in applied])
    finally:
        await conn.close()


@dataclass(frozen=True)
class _Parts:
    """What one instance runs, built once from the settings."""

    settings: Settings
    database: Database
    providers: Providers
    store: PostgresJobStore
    runner: JobRunner
    outbox: WebhookOutbox
    deliverer: WebhookDeliverer | None
    archive: ArchiveQueue
    storage: OutputStorage | None
    archiver: OutputArchiver | None
    hub: EventHub
    audit: AuditLog
    signer: CheckpointSigner | None
    sealer: Sealer | None
    run_workers: bool
    router: Router
    circuits: Circuits
    shutdown: GracefulShutdown


def _archiver(
    settings: Settings, queue: ArchiveQueue, storage: OutputStorage | None
) -> OutputArchiver | None:
    """None when OUTPUT_STORE_URL is `none`: outputs are then left pending, unarchived."""
    if storage is None:
        return None
    return OutputArchiver(
        queue=queue,
        storage=storage,
        fetcher=OutputFetcher(
            max_bytes=settings.output_max_bytes,
            allow_private=settings.output_fetch_allow_private,
        ),
        lease_s=settings.archive_lease_s,
        max_attempts=settings.output_fetch_attempts,
        backoff_base_s=settings.output_fetch_backoff_s,
        concurrency=settings.archive_concurrency,
    )


def _storage(settings: Settings) -> OutputStorage | None:
    secret = settings.aws_secret_access_key
    return open_storage(
        settings.output_store,
        s3=S3Credentials(
            access_key_id=settings.aws_access_key_id.get_secret_value()
            if settings.aws_access_key_id
            else None,
            secret_access_key=secret.get_secret_value() if secret else None,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        ),
    )


def _build_parts(
    settings: Settings,
    database: Database,
    providers: Providers,
    *,
    run_workers: bool,
    runner_options: dict[str, Any],
) -> _Parts:
    store = PostgresJobStore(database, max_batch=settings.intake_max_batch)
    circuits = Circuits(
        PROVIDERS,
        failure_threshold=settings.circuit_failure_threshold,
        cool_down_s=settings.circuit_cool_down_s,
        max_cool_down_s=max(10 * settings.circuit_cool_down_s, 300.0),  # doubled per failed probe
    )
    router = Router(
        settings.routes,
        enabled=frozenset(providers.adapters),
        timeout_s=settings.job_timeout_s,
        circuits=circuits.__getitem__,
    )
    runner = JobRunner(
        store=store,
        adapters=providers.adapters,
        callback_base_url=settings.base_url,
        router=router,
        circuits=circuits,
        **{**runner_options_from(settings), **runner_options},
    )
    outbox = WebhookOutbox(database)
    secret = settings.client_webhook_secret
    deliverer = None
    if secret is not None:
        deliverer = WebhookDeliverer(
            outbox=outbox,
            secret=secret.get_secret_value(),
            retry_schedule=settings.client_webhook_retry_schedule,
            allow_private=settings.client_webhook_allow_private,
        )
    archive = ArchiveQueue(database)
    storage = _storage(settings)
    archiver = _archiver(settings, archive, storage)
    # One LISTEN connection per instance: the log's NOTIFY feeds the streams, and the work
    # channels wake this instance's workers whichever instance made the work due.
    channels: dict[str, Callable[[], None]] = {}
    if run_workers:
        channels[JOBS_DUE_CHANNEL] = runner.wake
        if deliverer is not None:
            channels[WEBHOOKS_DUE_CHANNEL] = deliverer.wake
        if archiver is not None:
            channels[ARCHIVES_DUE_CHANNEL] = archiver.wake
    audit = AuditLog(database)
    key = settings.audit_signing_key
    signer = CheckpointSigner(key.get_secret_value()) if key is not None else None
    sealer = None
    if settings.audit_sealer:
        sealer = Sealer(
            audit, signer=signer, checkpoint_interval_s=settings.audit_checkpoint_interval_s
        )
        channels[EVENTS_CHANNEL] = sealer.wake  # beside the hub's own reader of the log
    listen = settings.database_listen_url
    listen_dsn = listen.get_secret_value() if listen is not None else database.dsn
    hub = EventHub(store=store, dsn=listen_dsn, channels=channels)
    shutdown = GracefulShutdown(grace_s=settings.shutdown_grace_s, settle=store.settle_writes)
    return _Parts(
        settings, database, providers, store, runner, outbox, deliverer, archive, storage,
        archiver, hub, audit, signer, sealer, run_workers, router, circuits, shutdown,
    )  # fmt: skip


def _add_routes(app: web.Application, parts: _Parts) -> None:
    settings = parts.settings
    jobs = JobsApi(
        parts.store,
        enabled_providers=frozenset(parts.providers.adapters),
        job_timeout_s=settings.job_timeout_s,
        webhooks_enabled=parts.deliverer is not None,
        outbox=parts.outbox,
        router=parts.router,
    )
    app.add_routes(jobs.routes())
    callbacks = CallbacksApi(
        parts.store, adapters=parts.providers.adapters, router=parts.router,
        circuits=parts.circuits,
    )  # fmt: skip
    app.add_routes(callbacks.routes())
    stream = StreamApi(hub=parts.hub, store=parts.store, heartbeat_s=settings.stream_heartbeat_s)
    app.add_routes(stream.routes())
    public_key = parts.signer.public_key if parts.signer else None
    app.add_routes(AuditApi(parts.audit, public_key=public_key).routes())
    app.add_routes(OutputsApi(parts.archive, parts.storage).routes())
    draining = parts.shutdown
    ops = OpsApi(
        parts.database, archive=parts.archive, outbox=parts.outbox, store=parts.store,
        draining=lambda: draining.draining,
    )  # fmt: skip
    app.add_routes(ops.routes())
    app.add_routes(PageApi().routes())


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _end_streams(hub: EventHub) -> Callable[[web.Application], Awaitable[None]]:
    """At shutdown, before the server waits for open requests: streams end (EventHub.end_streams)."""

    async def end_streams(_app: web.Application) -> None:
        hub.end_streams()

    return end_streams


def _workers(parts: _Parts, tasks: dict[str, asyncio.Task[None]]) -> list[Worker]:
    """The claim loops that run here, with how each releases its leases (graceful shutdown)."""
    runner, deliverer, archiver = parts.runner, parts.deliverer, parts.archiver
    workers = [
        Worker("jobs", runner, tasks["job-runner"], functools.partial(
            parts.store.release_leases, owner=runner.owner, lease_seconds=runner.lease_seconds,
        )),
    ]  # fmt: skip
    if deliverer is not None:
        workers.append(Worker("webhooks", deliverer, tasks["webhooks"], functools.partial(
            parts.outbox.release_leases, owner=deliverer.owner, lease_seconds=deliverer.lease_s,
        )))  # fmt: skip
    if archiver is not None:
        workers.append(Worker("archives", archiver, tasks["archiver"], functools.partial(
            parts.archive.release_leases, owner=archiver.owner, lease_seconds=archiver.lease_s,
        )))  # fmt: skip
    return workers


def _lifetime(
    parts: _Parts, *, handle_signals: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Starts the hub and the workers; at shutdown closes everything in reverse order, every
    close attempted even when an earlier one fails (AsyncExitStack). With `handle_signals`,
    SIGTERM and SIGINT drain the workers and release their leases before the server stops
    (service.web.shutdown)."""

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as closing:
            closing.push_async_callback(parts.database.close)  # last: the others may use it
            closing.push_async_callback(parts.providers.aclose)
            closing.push_async_callback(parts.store.close)
            closing.push_async_callback(parts.hub.close)
            await parts.hub.start()
            tasks: dict[str, asyncio.Task[None]] = {}
            closing.push_async_callback(parts.runner.close)
            if parts.run_workers:
                tasks["job-runner"] = asyncio.create_task(parts.runner.run(), name="job-runner")
            if parts.deliverer is not None:
                closing.push_async_callback(parts.deliverer.close)
                if parts.run_workers:
                    tasks["webhooks"] = asyncio.create_task(parts.deliverer.run(), name="webhooks")
            if parts.sealer is not None:
                tasks["audit-sealer"] = asyncio.create_task(parts.sealer.run(), name="audit-sealer")
            if parts.archiver is not None:
                closing.push_async_callback(parts.archiver.close)
                if parts.run_workers:
                    tasks["archiver"] = asyncio.create_task(parts.archiver.run(), name="archiver")
            # first: no work starts while closing
            closing.push_async_callback(_stop, list(tasks.values()))
            if parts.run_workers:
                for worker in _workers(parts, tasks):
                    parts.shutdown.add(worker)
            if handle_signals:
                parts.shutdown.install_signal_handlers()
            yield

    return lifetime


def create_app(
    settings: Settings,
    *,
    database: Database,
    providers: Providers | None = None,
    run_workers: bool | None = None,
    runner_options: dict[str, Any] | None = None,
    handle_signals: bool = False,
) -> web.Application:
    """The application over an open database; the database and the providers' clients are
    closed with the app. `run_workers=False` serves the API and callbacks only.
    `handle_signals` (`serve`, under web.run_app): SIGTERM/SIGINT shut down gracefully."""
    parts = _build_parts(
        settings,
        database,
        providers if providers is not None else build_providers(settings),
        run_workers=settings.run_workers if run_workers is None else run_workers,
        runner_options=runner_options or {},
    )
    app = web.Application(
        middlewares=[
            request_context_middleware,
            error_middleware,
            token_middleware(tuple(t.get_secret_value() for t in settings.api_tokens)),
        ],
        # Bodies are read through service.web.bodies with per-route limits; this is the ceiling.
        client_max_size=CALLBACK_BODY_LIMIT,
    )
    app[SETTINGS_KEY] = settings
    app[DATABASE_KEY] = database
    app[STORE_KEY] = parts.store
    app[RUNNER_KEY] = parts.runner
    app[HUB_KEY] = parts.hub
    _add_routes(app, parts)
    app.on_shutdown.append(_end_streams(parts.hub))
    app[SHUTDOWN_KEY] = parts.shutdown
    app.cleanup_ctx.append(_lifetime(parts, handle_signals=handle_signals))
    return app


async def build_app(
    settings: Settings, *, dsn: str, migrate: bool = True, handle_signals: bool = False
) -> web.Application:
    """Migrates the database (unless the caller did), opens the pool and returns the ready
    application."""
    if migrate:
        await prepare_database(dsn)
    database = await Database.open(
        dsn,
        pooled=settings.database_pooled,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
    )
    return create_app(settings, database=database, handle_signals=handle_signals)
