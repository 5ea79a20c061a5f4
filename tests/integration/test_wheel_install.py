"""The wheel as users install it: built from this repository, installed in a clean virtualenv,
run from a folder outside the repository (so none of its sources can be imported), it
migrates a fresh database and serves a job end to end; without its migrations it refuses to
start, loudly.

One virtualenv serves the whole module. Measured on the 2-core machine: 4 s to build the wheel
(pip wheel, hatchling in an isolated build environment), 13 s for `python -m venv` and the
install of the wheel and its dependencies from the package index, then about 8 s of tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from simulators import SimulatorConfig, start_simulators
from tests.conftest import dsn_with_database

REPO = Path(__file__).resolve().parents[2]
MIGRATION_FILES = sorted((REPO / "sql" / "migrations").glob("*.sql"))
TERMINAL = {"succeeded", "failed", "canceled"}

# Building and installing take a while on a cold machine; the suite's 180 s is for one test.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class InstalledWheel:
    venv: Path
    python: Path
    workdir: Path  # outside the repository: the cwd of every command
    package_dir: Path  # site-packages/service of the virtualenv
    timings: dict[str, float]

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing of the developer's, no PYTHONPATH, the venv first."""
        env = {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", str(self.workdir)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "SERVICE_DATA_DIR": str(self.workdir / "data"),
            "LOG_FORMAT": "json",
        }
        return {**env, **extra}


def run(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - our own interpreter, pip and venv
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    root = tmp_path_factory.mktemp("wheel-install")
    timings: dict[str, float] = {}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]

    started = time.monotonic()
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(REPO)])
    (wheel,) = (root / "dist").glob("imagejobs-*.whl")
    timings["build_wheel_s"] = time.monotonic() - started

    started = time.monotonic()
    venv = root / "venv"
    # A clean virtualenv (no system site-packages). It gets no pip of its own: this pip
    # installs into it (`--python`), which saves seeding a pip that would be used once.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", str(wheel)])
    timings["venv_and_install_s"] = time.monotonic() - started

    workdir = root / "elsewhere"
    workdir.mkdir()
    installed = InstalledWheel(
        venv=venv,
        python=python,
        workdir=workdir,
        package_dir=Path(
            run(
                [str(python), "-c", "import service, os; print(os.path.dirname(service.__file__))"],
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "")},
            ).stdout.strip()
        ),
        timings=timings,
    )
    # The code under test is the installed copy, not this repository's.
    assert installed.package_dir.is_relative_to(venv), installed.package_dir
    print(f"wheel install timings: {timings}", file=sys.stderr)
    yield installed
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def fresh_database(pg_server_dsn: str) -> AsyncIterator[str]:
    """An empty database of its own (no migrations), dropped afterwards."""
    name = f"imagejobs_wheel_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield dsn_with_database(pg_server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_service(
    wheel: InstalledWheel, command: str, env: dict[str, str], *, within_s: float = 120
) -> tuple[int, str, str]:
    """`python -m service <command>` from the virtualenv, to its end: (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(wheel.python), "-m", "service", command,
        cwd=wheel.workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"`python -m service {command}` still running after {within_s} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def applied_versions(dsn: str) -> list[int] | None:
    """The versions in schema_migrations, or None when the table does not exist."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return None
        return list(
            await conn.fetchval("SELECT array_agg(version ORDER BY version) FROM schema_migrations")
        )
    finally:
        await conn.close()


async def test_the_wheel_migrates_and_serves_a_job(
    installed_wheel: InstalledWheel, fresh_database: str
) -> None:
    env = installed_wheel.env(DATABASE_URL=fresh_database)
    status, out, err = await run_service(installed_wheel, "migrate", env)
    assert status == 0, f"migrate failed:\n{out}\n{err}"
    assert await applied_versions(fresh_database) == list(range(1, len(MIGRATION_FILES) + 1))

    sims = await start_simulators(config=SimulatorConfig(queue_seconds=0.05, run_seconds=0.1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_env = installed_wheel.env(
        DATABASE_URL=fresh_database, HOST="127.0.0.1", PORT=str(port), PUBLIC_BASE_URL=url,
        KREA_API_URL=sims.krea_url, KREA_API_TOKEN=sims.krea_token,
        FAL_QUEUE_URL=sims.fal_url, FAL_KEY=sims.fal_key, FAL_JWKS_URL=sims.fal_jwks_url,
        SCENARIO_API_URL=sims.scenario_url, SCENARIO_SDK_API_KEY=sims.scenario_api_key,
        SCENARIO_SDK_API_SECRET=sims.scenario_api_secret,
    )  # fmt: skip
    log_path = installed_wheel.workdir / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(installed_wheel.python), "-m", "service", "serve",
            cwd=installed_wheel.workdir, env=serve_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.returncode is None, (
                    f"serve exited with {proc.returncode}:\n{log_tail()}"
                )
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"serve not ready in 60 s:\n{log_tail()}"
                await asyncio.sleep(0.1)

            created = await http.post(
                "/v1/jobs",
                json={
                    "provider": "scenario",
                    "model": "model_flux-krea-dev",
                    "input": {"prompt": "a lighthouse at dawn"},
                },
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            # Scenario is polled by the service (first poll after about 1 s): poll it in turn.
            deadline = time.monotonic() + 60
            while (job := (await http.get(f"/v1/jobs/{job_id}")).json())["status"] not in TERMINAL:
                assert time.monotonic() < deadline, f"job still {job['status']}:\n{log_tail()}"
                await asyncio.sleep(0.2)
            assert job["status"] == "succeeded", job
            assert job["outputs"], job
            # the operator page's files are package data: they must be in the wheel
            for path, marker in (("/", "<html"), ("/page/page.js", "sessionStorage")):
                page = await http.get(path)
                assert page.status_code == 200 and marker in page.text, (path, page.text)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await sims.close()
    assert proc.returncode == 0, f"serve did not stop cleanly ({proc.returncode}):\n{log_tail()}"


@contextlib.contextmanager
def broken_migrations(wheel: InstalledWheel, how: str) -> Iterator[Path]:
    """The installed service/sql/migrations removed or emptied, and put back afterwards (the
    virtualenv is shared by this module's tests)."""
    migrations = wheel.package_dir / "sql" / "migrations"
    aside = wheel.workdir / "migrations-aside"
    migrations.rename(aside)
    if how == "empty":
        migrations.mkdir()
    try:
        yield migrations
    finally:
        if migrations.exists():
            migrations.rmdir()
        aside.rename(migrations)


@pytest.mark.parametrize(
    ("how", "message"), [("removed", "does not exist"), ("empty", "no migration files")]
)
async def test_the_wheel_without_its_migrations_refuses_to_start(
    installed_wheel: InstalledWheel, fresh_database: str, how: str, message: str
) -> None:
    env = installed_wheel.env(DATABASE_URL=fresh_database, PORT=str(free_port()))
    with broken_migrations(installed_wheel, how) as migrations:
        for command in ("migrate", "serve"):
            status, out, err = await run_service(installed_wheel, command, env, within_s=60)
            assert status != 0, f"{command} exited 0:\n{out}\n{err}"
            line = f"cannot {command}: "
            assert line in err, err
            assert message in err and str(migrations) in err, err
            assert "Traceback" not in err, err
    assert await applied_versions(fresh_database) is None  # nothing was applied
