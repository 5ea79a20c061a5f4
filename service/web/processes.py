"""WEB_CONCURRENCY: several HTTP server processes of one `serve`, sharing its port.

The parent (which has already started the embedded PostgreSQL and applied the migrations)
forks the children and supervises them; each child runs a whole instance (its own pool, LISTEN
connection and workers) and binds the port with SO_REUSEPORT, so the kernel spreads incoming
connections across them. The workers share their work across processes as they do across
instances (leases and advisory locks).

Supervision:
- SIGTERM or SIGINT to the parent is forwarded once, as SIGTERM, to every child (each child is
  in a process group of its own, so a signal to the parent's group is not delivered twice); the
  parent waits for them (SIGKILL after `stop_timeout_s`: SHUTDOWN_GRACE_S + 31 s under
  `serve`) and exits 0. Each child drains and releases its own work (service.web.shutdown).
- A child that exits while no stop was asked for stops the others and the parent exits 1: one
  process of N gone means a service running at reduced capacity without anyone noticing, so the
  failure is left to the outer supervisor (systemd, Kubernetes) that restarts the whole `serve`.
- A child never outlives the parent: it asks the kernel for SIGTERM when the parent dies
  (PR_SET_PDEATHSIG), so even a SIGKILLed parent leaves no orphan serving the port.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from types import FrameType

from service.logs import get_logger

STOP_TIMEOUT_S = 30.0  # beyond aiohttp's own shutdown_timeout (10 s) and the workers' closing
_TICK_S = 1.0
_PR_SET_PDEATHSIG = 1


def supervise(
    count: int, serve_one: Callable[[], None], *, stop_timeout_s: float = STOP_TIMEOUT_S
) -> int:
    """Runs `serve_one` in `count` forked processes until they stop; the exit status of `serve`."""
    log = get_logger("service.processes")
    parent = os.getpid()
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_child, args=(parent, serve_one), name=f"web-{i}", daemon=False)
        for i in range(count)
    ]
    stopping = False

    def stop_children(reason: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info("web_processes_stopping", reason=reason)
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)

    for child in children:
        child.start()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_children(signal.Signals(signum).name)

    # Installed after the forks (the children must not inherit them). A signal in between stops
    # the parent with the default action, and the children then get SIGTERM from the kernel.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("web_processes_started", pids=[c.pid for c in children])
    failed = False
    kill_at: float | None = None
    try:
        running = list(children)
        while running:
            # A bounded wait, so that a stop asked for by a signal is followed up within a tick.
            ready = set(wait([c.sentinel for c in running], timeout=_TICK_S))
            for child in [c for c in running if c.sentinel in ready]:
                running.remove(child)
                child.join()
                if not stopping:
                    log.error("web_process_exited", pid=child.pid, exitcode=child.exitcode)
                    failed = True
                    stop_children("web_process_exited")
                elif child.exitcode not in (0, -signal.SIGTERM):
                    log.error("web_process_failed", pid=child.pid, exitcode=child.exitcode)
                    failed = True
            if stopping and running:
                kill_at = kill_at or time.monotonic() + stop_timeout_s
                if time.monotonic() >= kill_at:
                    for child in running:
                        log.error("web_process_killed", pid=child.pid)
                        child.kill()
                    failed = True
                    kill_at = float("inf")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _child(parent: int, serve_one: Callable[[], None]) -> None:
    os.setpgid(0, 0)  # a group of its own: signals reach it through the parent, once
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above: stop now
        return
    serve_one()
