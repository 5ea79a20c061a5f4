"""`make conformance`: Schemathesis (every check, every phase, stateful included) against
`python -m service demo` (the simulators behind the service, an API token), from a fresh data
directory; exits with Schemathesis' status (0: no failure)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        port = free_port()
        env = {**os.environ, "SERVICE_DATA_DIR": tmp, "PORT": str(port)}
        demo = subprocess.Popen(
            [sys.executable, "-m", "service", "demo"], env=env, stdout=subprocess.PIPE, text=True
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
                print("the demo did not start", file=sys.stderr)
                return 1
            # The demo keeps logging: its output is read to the end, or its pipe would fill
            # and block it.
            threading.Thread(target=demo.stdout.read, daemon=True).start()
            config = Path(tmp) / "schemathesis.toml"
            config.write_text(f'[auth.openapi.bearer]\nbearer = "{token}"\n')
            hooks_env = {**env, "PYTHONPATH": str(HERE), "SCHEMATHESIS_HOOKS": "schemathesis_hooks"}
            command = [
                str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
                "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
                "--max-examples", "10", "--seed", "1", "--no-color", *sys.argv[1:],
            ]  # fmt: skip
            # The command is built from fixed parts and this run's own port and token.
            return subprocess.run(command, env=hooks_env, check=False).returncode  # noqa: S603
        finally:
            demo.terminate()
            demo.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
