"""Load generation over real HTTP: fixed offered rates and saturation (closed loop).

Latency is measured from each request's intended send time (fixed rate) so that a stalled
server cannot hide its queueing delay (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _send(
    session: aiohttp.ClientSession, base: str, request: Request, result: Result, started: float
) -> None:
    try:
        async with session.request(request.method, base + request.path, data=request.body or None,
                                   headers=request.headers) as response:  # fmt: skip
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if 200 <= status < 300:
        result.ok += 1
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
    else:
        result.errors += 1


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def fixed_rate(
    base: str, requests: Sequence[Request], *, rate: float, connections: int = 256
) -> Result:
    """Sends `requests` at `rate` per second (open loop)."""
    result = Result()
    async with _session(connections) as session:
        start = time.perf_counter()
        tasks = []
        for i, request in enumerate(requests):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(session, base, request, result, due)))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.elapsed_s = time.perf_counter() - start
    return result


async def closed_loop(base: str, requests: Sequence[Request], *, concurrency: int) -> Result:
    """Sends `requests` as fast as `concurrency` workers can (saturation)."""
    result = Result()
    position = 0
    async with _session(concurrency) as session:

        async def worker() -> None:
            nonlocal position
            while position < len(requests):
                request = requests[position]
                position += 1
                result.sent += 1
                await _send(session, base, request, result, time.perf_counter())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - start
    return result
