"""The way an attacker reads the logs: the whole acceptance suite runs again in a subprocess with
every logger at DEBUG, everything it writes is collected, and no secret the run issued may be in
it, verbatim or encoded. The secrets are those the ledger plugin (tests.security.secrets_ledger)
saw being minted, configured or signed.

The nested run uses this session's PostgreSQL server (DATABASE_URL = pg_server_dsn): a second
process starting the embedded server under the same data directory would share it, and at exit
stop it under this session's feet. Its tests make databases of their own with random names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from tests.conftest import REPO
from tests.security.scan import LEDGER_ENV, MIN_SECRET_CHARS, Leak, find_leaks, usable

# (tests.security.secrets_ledger is not imported here: importing it wraps this session's functions.)
# The run takes 170-180 s on this 2-core machine and 590 s pinned to one core beside `make
# bench` (about the pace of the project's CI machine): a hang guard with room above that.
NESTED_TIMEOUT_S = 1800
# What a meaningful run issues at least once; a ledger without one of them proves nothing.
REQUIRED_KINDS = (
    "callback_token",
    "fal_webhook_signature",
    "client_webhook_signature",
    "client_webhook_secret",
    "client_webhook_key_raw",
    "api_tokens",
    "krea_api_token",
    "fal_key",
    "scenario_api_key",
    "scenario_api_secret",
    "scenario_basic_credentials",
)
# Lines that show the logs were read at DEBUG, from the service and from the libraries.
EXPECTED_IN_LOGS = ('"provider_http_request"', '"request_handled"', '"logger":"httpx"')


def read_ledger(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [(entry["kind"], entry["value"]) for entry in entries]


def _is_log_file(path: Path) -> bool:
    return path.is_file() and (
        path.suffix == ".log" or path.name == "log" or path.parent.name in {"log", "pg_log"}
    )


def collect_logs(
    stdout: Path,
    stderr: Path,
    basetemp: Path,
    server_log: Path | None,
    server_log_from: int | None,
) -> dict[str, str]:
    """The nested run's stdout and stderr, every log file its tests' processes wrote under their
    tmp_path (the outage test's own PostgreSQL server), and what the session's server logged
    meanwhile."""
    sources = {
        "stdout": stdout.read_text(errors="replace"),
        "stderr": stderr.read_text(errors="replace"),
    }
    for path in sorted(basetemp.rglob("*")):
        if _is_log_file(path):
            sources[str(path.relative_to(basetemp))] = path.read_text(errors="replace")
    if server_log is not None and server_log_from is not None and server_log.exists():
        with server_log.open("rb") as log:
            log.seek(server_log_from)
            sources["session postgres log"] = log.read().decode(errors="replace")
    return sources


def _log_size(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


def describe(leaks: list[Leak]) -> str:
    lines = [f"{len(leaks)} secret(s) found in the logs:"]
    for leak in leaks[:40]:
        lines.append(f"  {leak.kind} ({leak.form}) in {leak.source} line {leak.line}:")
        lines.append(f"    {leak.excerpt}")
    if len(leaks) > 40:
        lines.append(f"  ... and {len(leaks) - 40} more")
    return "\n".join(lines)


@pytest.mark.timeout(NESTED_TIMEOUT_S + 60)
def test_no_secret_issued_by_the_acceptance_run_reaches_its_logs(
    pg_server_dsn: str, pg_server_log: Path | None, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    basetemp = tmp_path / "nested"
    env = {
        **os.environ,
        "TEST_LOG_LEVEL": "debug",
        "TEST_LOG_FORMAT": "json",
        LEDGER_ENV: str(ledger),
        "DATABASE_URL": pg_server_dsn,
        "PYTHONUNBUFFERED": "1",
    }
    # The session's server (tests/conftest.py) logs the nested run's statements too.
    server_log_from = None if pg_server_log is None else _log_size(pg_server_log)
    started = time.monotonic()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        try:
            returncode: int | str = subprocess.run(  # noqa: S603 - our interpreter, our suite
                [
                    sys.executable, "-m", "pytest", "tests/acceptance",
                    "-p", "tests.security.secrets_ledger",
                    "--capture=no", "-q", f"--basetemp={basetemp}",
                ],
                cwd=REPO, env=env, stdout=out, stderr=err, timeout=NESTED_TIMEOUT_S, check=False,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = f"killed after {NESTED_TIMEOUT_S} s"  # what it wrote is still read
    elapsed = time.monotonic() - started
    print(f"\nnested acceptance run: exit {returncode} in {elapsed:.1f} s")

    secrets = read_ledger(ledger)
    sources = collect_logs(stdout, stderr, basetemp, pg_server_log, server_log_from)
    leaks = find_leaks(sources, secrets)
    kinds = Counter(kind for kind, _ in secrets)
    print(f"ledger: {dict(sorted(kinds.items()))}")
    print(f"logs read: { {name: len(text.splitlines()) for name, text in sources.items()} }")

    problems = []
    if leaks:
        problems.append(describe(leaks))
    missing = [kind for kind in REQUIRED_KINDS if not usable(s for s in secrets if s[0] == kind)]
    if missing:
        problems.append(
            f"the ledger has no usable ({MIN_SECRET_CHARS}+ chars) {missing}: the run proves nothing"
        )
    unseen = [marker for marker in EXPECTED_IN_LOGS if marker not in sources["stdout"]]
    if unseen:
        problems.append(f"the nested run's logs lack {unseen}: were they read at debug?")
    for kind, value in [s for s in secrets if s[0] == "callback_token"][:1]:
        # The scanner finds a real callback token of this run when it is there, encoded twice.
        probe = {"probe": "x " + quote(quote(value, safe=""), safe="") + " y"}
        if not find_leaks(probe, [(kind, value)]):
            problems.append("the scanner misses a double-encoded callback token")
    if returncode != 0:
        summary = [
            line
            for line in sources["stdout"].splitlines()
            if not line.startswith("{")  # a log line
            and (line.startswith(("FAILED", "ERROR")) or " passed" in line or " failed" in line)
        ]
        problems.append(
            f"the nested acceptance run failed (exit {returncode}); its summary:\n  "
            + "\n  ".join(summary[-30:])
            + f"\n(its whole output: {stdout}, {stderr})"
        )
    assert not problems, "\n\n".join(problems)
