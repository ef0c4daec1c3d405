"""The service as it runs in production: ``back-spasm-cds serve`` (gunicorn) in a subprocess on a free loopback port.

For the tests that must see what only a real HTTP server shows: gunicorn's own error answers, kept-alive
connections, chunked bodies, worker processes and crashes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A running service: ``start()`` waits until it answers /healthz, ``stop()`` ends it (and every worker)."""

    def __init__(self, database: Path, env: Mapping[str, str] | None = None, port: int | None = None):
        self.database = database
        self.port = port or free_port()
        self.env = {**os.environ, "BACK_SPASM_CDS_DATABASE": str(database), "BACK_SPASM_CDS_LOG_LEVEL": "WARNING", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log = database.with_suffix(".log")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "LiveServer":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "protocol.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the service did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def kill(self) -> None:
        """kill -9 of the master and every worker, as a crash would."""
        if self.process is None:
            return
        pids = [self.process.pid, *self.worker_pids()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully, then by force."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
