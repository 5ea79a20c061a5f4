"""Run the three provider simulators until interrupted, for the demo and manual testing.

    python -m simulators --host 127.0.0.1 --krea-port 9101 --fal-port 9102 \
        --scenario-port 9103 [--queue-seconds 0.2] [--run-seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from simulators import SimulatorConfig, start_simulators


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (kept separate so it can be tested)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Serve local Krea, fal and Scenario simulators until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--krea-port", type=int, default=9101)
    parser.add_argument("--fal-port", type=int, default=9102)
    parser.add_argument("--scenario-port", type=int, default=9103)
    parser.add_argument("--queue-seconds", type=float, default=0.2)
    parser.add_argument("--run-seconds", type=float, default=0.5)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="seed for random faults")
    parser.add_argument(
        "--verbose-statuses", action="store_true", help="walk through every intermediate status"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Start the simulators, print how to reach them, and wait for SIGINT or SIGTERM."""
    config = SimulatorConfig(
        queue_seconds=args.queue_seconds,
        run_seconds=args.run_seconds,
        fail_rate=args.fail_rate,
        random_seed=args.seed,
        verbose_statuses=args.verbose_statuses,
    )
    ports = {"krea": args.krea_port, "fal": args.fal_port, "scenario": args.scenario_port}
    sims = await start_simulators(
        host=args.host, ports=ports, config=config, access_log=args.access_log
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not every platform lets the loop handle signals; Ctrl-C then ends asyncio.run.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    lines = [
        f"krea      {sims.krea_url}  token={sims.krea_token}",
        f"fal       {sims.fal_url}  key={sims.fal_key}  jwks={sims.fal_jwks_url}",
        f"scenario  {sims.scenario_url}  key={sims.scenario_api_key}"
        f"  secret={sims.scenario_api_secret}",
        "controls  {root}/_sim/config | /_sim/stats | /_sim/jobs | /_sim/reset"
        "  (fal: /_sim/rotate_key)",
        "Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
    try:
        await stop.wait()
    finally:
        await sims.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m simulators`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
