"""Slow clients: does the service stay available while many connections send their request a line at a time?

Starts the service as ``bench/soak.py`` does (``back-spasm-cds serve``, default settings, production mode), opens
N connections (default 64) that each send a partial request head and then one more header line every few seconds
(the "slowloris" pattern: no authentication is needed to hold a connection), and meanwhile probes ``/healthz`` on
fresh connections every 0.5 s. Reported (JSON): probes answered within 2 s, their p50/p99/max latency, and how
many slow connections the service closed on its own (a read timeout) before the run ended.

    python bench/slow_clients.py [--connections 64] [--seconds 30] [--interval 2] [--worker-class gevent|gthread]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py sits beside this file: keep this folder off the import path so the standard library's http loads.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402


class SlowConnection(threading.Thread):
    """One connection sending a request head a line at a time; notes when the server closed it."""

    def __init__(self, port: int, interval: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.interval, self.stop = port, interval, stop
        self.closed_by_server_after: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(b"POST /cds-services/back-spasm-treatment-pathway-patient-view HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            line = 0
            while not self.stop.wait(self.interval):
                sock.sendall(b"X-Slow-%d: x\r\n" % line)
                line += 1
        except OSError:
            self.closed_by_server_after = time.monotonic() - started


def probe(port: int) -> float | None:
    """Seconds /healthz took on a fresh connection, or None if it was not answered within 2 s."""
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
    except OSError:
        return None
    return time.monotonic() - started if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between the header lines of a slow connection")
    parser.add_argument("--worker-class", choices=("gevent", "gthread"), default=None, help="the service's worker_class (default: its default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        port = soak.free_port()
        server = soak.start_server(port, folder, soak.trusted_clients(ec.generate_private_key(ec.SECP256R1()), folder), args.worker_class)
        stop = threading.Event()
        slow = [SlowConnection(port, args.interval, stop) for _ in range(args.connections)]
        try:
            for connection in slow:
                connection.start()
            time.sleep(1.0)
            times: list[float | None] = []
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                times.append(probe(port))
                time.sleep(0.5)
        finally:
            stop.set()
            soak.stop_server(server)
        answered = sorted(t for t in times if t is not None)
        closed = [c.closed_by_server_after for c in slow if c.closed_by_server_after is not None]
        print(json.dumps({
            "worker_class": args.worker_class or "default", "slow_connections": args.connections, "seconds": args.seconds, "probes": len(times),
            "answered_within_2_s": len(answered), "availability": round(len(answered) / max(1, len(times)), 3),
            "latency_ms": {"p50": round(1000 * statistics.median(answered), 1) if answered else None,
                           "p99": round(1000 * answered[min(len(answered) - 1, int(0.99 * len(answered)))], 1) if answered else None,
                           "max": round(1000 * answered[-1], 1) if answered else None},
            "slow_connections_closed_by_the_service": len(closed),
            "closed_after_s": round(statistics.median(closed), 1) if closed else None,
        }, indent=2))


if __name__ == "__main__":
    main()
