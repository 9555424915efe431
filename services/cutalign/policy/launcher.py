"""Start the embedded policy server as a subprocess and wait until it serves (tests, demo, benchmarks).

A subprocess, not a thread: ``kserve.ModelServer`` installs signal handlers and runs its own event loop (both
need the main thread), and the FastAPI app it serves is a module-level singleton — one server per process.

    with start_policy_server("/path/to/checkpoint", max_batch_size=8) as server:
        client = PolicyClient(PolicySettings(url=server.url))

The server's admin token is ``server.admin_token``: the one passed in, else one generated here and handed to
the child through its environment (never on its command line, where ``ps`` would show it).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PolicyServerProcess:
    url: str
    model_name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_token: str = field(repr=False)
    _log_file: Any = field(default=None, repr=False)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models/{self.model_name}", timeout=2) as r:
                return bool(json.loads(r.read()).get("ready"))
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"policy server exited with code {self.process.returncode} before serving; "
                    f"log:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"policy server not ready after {timeout_s:.0f}s; log:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("policy server did not stop within %.0fs; killing it", timeout_s)
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return int(self.process.returncode)

    def __enter__(self) -> PolicyServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_policy_server(
    policy_uri: str | Path,
    *,
    port: int | None = None,
    model_name: str = "policy",
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 120.0,
    admin_token: str | None = None,
    **options: object,
) -> PolicyServerProcess:
    """Run ``python -m cutalign.policy.server`` on 127.0.0.1:``port`` (free port if None) until ready.

    ``options`` are ``PolicyServerSettings`` fields or KServe flags, passed as ``--name value`` (a list as
    ``--name v1 v2``). ``env`` replaces the child's environment (e.g. to carry ``CUTALIGN_S3_*``).
    """
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "cutalign.policy.server",
        "--http_port",
        str(port),
        "--model_name",
        model_name,
        "--policy_uri",
        str(policy_uri),
    ]
    for name, value in options.items():
        if isinstance(value, list | tuple):
            args += [f"--{name}", *map(str, value)]
        elif value is not None:
            args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    token = admin_token or secrets.token_urlsafe(32)
    child_env = {**(os.environ if env is None else env), "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN": token}
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="cutalign-policy-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_file = log_path.open("wb")
    process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
    server = PolicyServerProcess(f"http://127.0.0.1:{port}", model_name, process, log_path, token, log_file)
    server.wait_ready(ready_timeout_s)
    log.info("policy server ready", extra={"url": server.url, "pid": process.pid})
    return server
