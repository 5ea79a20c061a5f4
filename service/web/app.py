"""The aiohttp application: wiring of the database, the store and the HTTP handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from service.config import Settings
from service.db.database import Database, connect
from service.db.migrations import apply_migrations
from service.errors import DatabaseUnavailable
from service.events.hub import EventHub
from service.logs import get_logger
from service.providers.registry import Providers, build_providers
from service.store import JobStore
from service.web.bodies import CALLBACK_BODY_LIMIT
from service.web.callbacks_api import CallbacksApi
from service.web.jobs_api import JobsApi
from service.web.middleware import error_middleware, request_context_middleware, token_middleware
from service.web.ops_api import OpsApi
from service.web.stream_api import StreamApi
from service.webhooks.delivery import WebhookDeliverer
from service.workers.runner import JobRunner
from service.workers.schedule import timings_from_settings


def runner_options_from(settings: Settings) -> dict[str, Any]:
    return {
        "timings": timings_from_settings(settings),
        "lease_seconds": settings.worker_lease_s,
        "concurrency_per_provider": settings.provider_concurrency,
    }


DATABASE_KEY = web.AppKey("database", Database)
STORE_KEY = web.AppKey("store", JobStore)
SETTINGS_KEY = web.AppKey("settings", Settings)
RUNNER_KEY = web.AppKey("runner", JobRunner)
HUB_KEY = web.AppKey("hub", EventHub)


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


def create_app(
    settings: Settings,
    *,
    database: Database,
    providers: Providers | None = None,
    run_workers: bool | None = None,
    runner_options: dict[str, Any] | None = None,
) -> web.Application:
    """The application over an open database; the database and the providers' clients are
    closed with the app. `run_workers=False` serves the API and callbacks only."""
    providers = providers if providers is not None else build_providers(settings)
    run_workers = settings.run_workers if run_workers is None else run_workers
    app = web.Application(
        middlewares=[
            request_context_middleware,
            error_middleware,
            token_middleware(tuple(t.get_secret_value() for t in settings.api_tokens)),
        ],
        # Bodies are read through service.web.bodies with per-route limits; this is the ceiling.
        client_max_size=CALLBACK_BODY_LIMIT,
    )
    store = JobStore(
        database, batching=settings.intake_batching, max_batch=settings.intake_max_batch
    )
    runner = JobRunner(
        store=store,
        adapters=providers.adapters,
        callback_base_url=settings.base_url,
        **{**runner_options_from(settings), **(runner_options or {})},
    )
    app[SETTINGS_KEY] = settings
    app[DATABASE_KEY] = database
    app[STORE_KEY] = store
    app[RUNNER_KEY] = runner
    deliverer = (
        WebhookDeliverer(
            database=database,
            secret=settings.client_webhook_secret.get_secret_value(),
            retry_schedule=settings.client_webhook_retry_schedule,
            allow_private=settings.client_webhook_allow_private,
        )
        if settings.client_webhook_secret is not None
        else None
    )
    hub = EventHub(
        database=database,
        dsn=database.dsn,
        channels={"webhook_deliveries": deliverer.wake} if deliverer and run_workers else {},
    )
    app[HUB_KEY] = hub
    app.add_routes(
        JobsApi(
            store,
            enabled_providers=frozenset(providers.adapters),
            job_timeout_s=settings.job_timeout_s,
            webhooks_enabled=deliverer is not None,
            on_work=runner.wake,
        ).routes()
    )
    app.add_routes(CallbacksApi(store, adapters=providers.adapters).routes())
    app.add_routes(
        StreamApi(
            hub=hub, store=store, database=database, heartbeat_s=settings.stream_heartbeat_s
        ).routes()
    )
    app.add_routes(OpsApi(database).routes())

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        await hub.start()
        tasks = []
        if run_workers:
            tasks.append(asyncio.create_task(runner.run(), name="job-runner"))
            if deliverer is not None:
                tasks.append(asyncio.create_task(deliverer.run(), name="webhook-deliverer"))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.close()
        if deliverer is not None:
            await deliverer.close()
        await hub.close()
        await store.close()
        await providers.aclose()
        await database.close()

    app.cleanup_ctx.append(lifetime)
    return app


async def build_app(settings: Settings, *, dsn: str) -> web.Application:
    """Migrates the database, opens the pool and returns the ready application."""
    await prepare_database(dsn)
    database = await Database.open(
        dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    return create_app(settings, database=database)
