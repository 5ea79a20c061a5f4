"""The operator page in a real headless Chromium: Debian's /usr/bin/chromium driven by
Playwright (which downloads no browser here: `make test` installs Debian's, see the Makefile's
`browser` step). A missing browser fails these tests loudly; it never skips them.

One browser for the session; each test gets a fresh context (its own sessionStorage), a page
whose every request is recorded, and a screenshot under test-artifacts/ when it ends. A page
error (an uncaught exception in the page's script) fails the test that caused it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, async_playwright

from service.config import Settings
from service.db.database import Database
from tests.conftest import PROVIDERS_OFFLINE, REPO, Service, start_service

CHROMIUM = Path(os.environ.get("PAGE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "page-token-3f9c2a7e51b84d06"


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium); "
            "the operator page's tests need a real browser"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@dataclass
class RecordedPage:
    """A page and everything it did: its requests and its uncaught script errors."""

    page: Page
    screenshot: Path
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False

    async def close(self) -> None:
        """Screenshot, then close, once. A server the page uses calls this before it stops:
        the page keeps reading (its stream, its timers), and a request cut by a stopped
        server would fail the test after its end."""
        if self.closed:
            return
        self.closed = True
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=self.screenshot, full_page=True)
        # a test's route handler may be mid-request: its failure would land in a later test
        await self.page.unroute_all(behavior="ignoreErrors")
        await self.page.context.close()


@pytest.fixture
async def browsing(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[RecordedPage]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    recorded = RecordedPage(page, screenshot=ARTIFACTS / f"{request.node.name}.png")
    # a lambda: Playwright cannot register a bound builtin (list.append) as a handler
    page.on("request", lambda request: recorded.requests.append(request))
    page.on("pageerror", lambda error: recorded.errors.append(str(error)))
    yield recorded
    await recorded.close()
    assert not recorded.errors, recorded.errors


def locked_settings(**overrides: object) -> Settings:
    """Every provider enabled but unreachable (no runner), `/v1/*` behind TOKEN."""
    return Settings.model_validate(
        {"host": "127.0.0.1", "port": 0, "api_tokens": (TOKEN,), **PROVIDERS_OFFLINE, **overrides}
    )


@pytest.fixture
async def locked_service(database_url: str, browsing: RecordedPage) -> AsyncIterator[Service]:
    db = await Database.open(database_url, min_size=1, max_size=5)
    svc = await start_service(locked_settings(), db)
    yield svc
    await browsing.close()  # before the server it reads from
    await svc.server.close()


@pytest.fixture
async def api(locked_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=locked_service.url, headers=headers) as client:
        yield client
