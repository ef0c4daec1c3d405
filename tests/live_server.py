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
    """A running service in its own process group: ``start()`` waits until it is ready with its workers up,
    ``kill()`` ends it as a crash would, ``stop()`` gracefully. It can be started again on the same port and database.

    Settings come from ``env`` only: the caller's own ``BACK_SPASM_CDS_*`` variables are not passed on.
    """

    def __init__(self, database: Path, env: Mapping[str, str] | None = None, port: int | None = None):
        self.database = database
        self.port = port or free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BACK_SPASM_CDS_")}
        self.env = {**clean, "PYTHONPATH": str(ROOT), "BACK_SPASM_CDS_DATABASE": str(database), "BACK_SPASM_CDS_LOG_LEVEL": "WARNING",
                    **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log = database.with_suffix(".log")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "LiveServer":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as answer:
                    if answer.status == 200 and self.workers():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the service was not ready within {timeout} s: {self.log.read_text()[-3000:]}")

    def workers(self) -> list[int]:
        """Pids of the gunicorn workers (the master's children)."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        return found

    def kill(self) -> list[int]:
        """SIGKILL to the master and every worker at once, as a crash would; the pids killed."""
        if self.process is None:
            return []
        pids = [self.process.pid, *self.workers()]
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None
        return pids

    def stop(self) -> None:
        """Stop gracefully, then by force."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
