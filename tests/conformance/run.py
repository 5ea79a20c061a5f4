"""Schemathesis (every check, every phase, stateful included) against `python -m service demo`
(the simulators behind the service, an API token).

`make conformance` runs this file: a fresh data directory (the demo's embedded PostgreSQL) and
10 examples per operation; extra arguments go to `schemathesis run`. The suite runs the same with
fewer examples against its own server (tests/conformance/test_openapi_conformance.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_conformance(
    *,
    max_examples: int,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    output: IO[str] | None = None,
) -> int:
    """Schemathesis' exit status (0: no failure) for the API of a demo started with `env` on
    top of this process's environment; Schemathesis writes its report to `output` (default:
    this process's stdout)."""
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        port = free_port()
        demo_env = {**os.environ, **(env or {}), "SERVICE_DATA_DIR": tmp, "PORT": str(port)}
        demo = subprocess.Popen(
            [sys.executable, "-m", "service", "demo"],
            env=demo_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert demo.stdout is not None
            token = None
            for line in demo.stdout:  # the demo prints its token once it serves
                found = re.search(r"API token: (\S+)", line)
                if found:
                    token = found.group(1)
                    break
            if token is None:
                print("the demo did not start", file=output or sys.stderr)
                return 1
            # The demo keeps logging: its output is read to the end, or its pipe would fill
            # and block it.
            threading.Thread(target=demo.stdout.read, daemon=True).start()
            config = Path(tmp) / "schemathesis.toml"
            config.write_text(f'[auth.openapi.bearer]\nbearer = "{token}"\n')
            hooks_env = {
                **demo_env,
                "PYTHONPATH": str(HERE),
                "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
            }
            command = [
                str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
                "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
                "--max-examples", str(max_examples), "--seed", "1", "--no-color", *extra_args,
            ]  # fmt: skip
            # The command is built from fixed parts and this run's own port and token.
            return subprocess.run(  # noqa: S603
                command, env=hooks_env, stdout=output, stderr=subprocess.STDOUT, check=False
            ).returncode
        finally:
            demo.terminate()
            demo.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(run_conformance(max_examples=10, extra_args=sys.argv[1:]))
