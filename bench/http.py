"""Benchmark: the CDS Hooks service over HTTP against a bare endpoint, side by side, same server and load.

Both run under gunicorn on loopback with the same settings (the service's own: gthread workers, one per
core): the service answers patient-view for a 200-resource prefetch (record of bench/apply.py); the bare
endpoint is a Flask route that parses the same body with orjson and answers ``{}``. Clients are separate
processes with keep-alive connections, each sending requests back to back; both servers get the same
number of requests at the same concurrency, alternating in rounds so drift on the machine hits both.

With ``--split`` a third server runs the service with its $apply replaced by a replay of the first answer
(``no-engine``): everything else (parsing, checks, prefetch, cards, the durable card record, auth, CORS,
logs) still runs, so the gap between it and the service is the protocol's own cost.

    python bench/http.py [--requests 400] [--concurrency 1,4] [--rounds 3] [--split]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: keep its folder off the import path so the standard library's http loads.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

SERVICE = "back-spasm-treatment-pathway-patient-view"

BARE_APP = '''
import orjson
from flask import Flask, request
app = Flask(__name__)

@app.post("/cds-services/<service_id>")
def bare(service_id):
    orjson.loads(request.get_data())
    return app.response_class(b"{}", mimetype="application/json")
'''

SERVICE_APP = '''
import gc
from datetime import datetime, timezone
from service import create_app
from service.config import Settings
app = create_app(Settings.load(), clock=lambda: datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc))
gc.collect()
gc.freeze()
'''


NO_ENGINE_APP = SERVICE_APP.replace("gc.collect()", """import service.cds_hooks.hooks
_apply, _first = service.cds_hooks.hooks.run_calls, []

def replay(engine, calls, now):
    if not _first:
        _first.append(_apply(engine, calls, now))
    return _first[0]

service.cds_hooks.hooks.run_calls = replay
gc.collect()""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body() -> bytes:
    """A patient-view request whose prefetch holds the 200-resource record, keyed as the service's templates."""
    from apply import build_record

    from protocol.engine.content import load_content
    from protocol.engine.apply import Engine
    from service.cds_hooks.registry import build_services

    record = build_record(200)
    services = build_services(Engine(load_content()), 2048)
    templates = services[SERVICE].prefetch
    by_type: dict[str, list] = {}
    for resource in record[1:]:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict = {key: None for key in templates}
    prefetch["patient"] = record[0]
    for key in templates:
        rtype = key[0].upper() + key[1:]
        if rtype in by_type:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(by_type[rtype]),
                             "entry": [{"resource": r} for r in by_type[rtype]]}
    return json.dumps({"hook": "patient-view", "hookInstance": "0d5ba4a4-9c71-4f2e-9a4c-3b0cf1f0a001",
                       "context": {"patientId": record[0]["id"], "userId": "Practitioner/1"}, "prefetch": prefetch}).encode()


def start(module_text: str, port: int, workdir: Path, env: dict) -> subprocess.Popen:
    name = f"app_{port}"
    (workdir / f"{name}.py").write_text(module_text)
    cores = os.cpu_count() or 1
    command = [sys.executable, "-m", "gunicorn", f"{name}:app", "-b", f"127.0.0.1:{port}", "-k", "gthread", "-w", str(cores),
               "--threads", "4", "--preload", "--log-level", "warning"]
    log = open(workdir / f"{name}.log", "wb")
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server on {port} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}")


def client(args: tuple[int, bytes, int]) -> list[float]:
    port, payload, count = args
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", f"/cds-services/{SERVICE}", body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.close()
    return timings


def load(port: int, payload: bytes, requests: int, concurrency: int) -> tuple[list[float], float]:
    per_client = max(1, requests // concurrency)
    with multiprocessing.Pool(concurrency) as pool:
        started = time.perf_counter()
        results = pool.map(client, [(port, payload, per_client)] * concurrency)
        elapsed = time.perf_counter() - started
    timings = [t for r in results for t in r]
    return timings, len(timings) / elapsed


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per server per round and concurrency")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also measure the service with $apply replayed (no-engine)")
    args = parser.parse_args()
    payload = body()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(ROOT), BACK_SPASM_CDS_DATABASE=str(workdir / "bench.sqlite"), BACK_SPASM_CDS_LOG_LEVEL="WARNING")
        apps = {"service": SERVICE_APP, "bare": BARE_APP} | ({"no-engine": NO_ENGINE_APP} if args.split else {})
        ports = {name: free_port() for name in apps}
        servers = [start(apps[name], port, workdir, env) for name, port in ports.items()]
        try:
            for port in ports.values():  # warm up every worker
                load(port, payload, 40, 4)
            print(f"body {len(payload) / 1024:.0f} KB; gunicorn gthread, {os.cpu_count()} workers x 4 threads; {args.rounds} rounds")
            print(f"{'c':>3} {'endpoint':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                collected = {name: ([], []) for name in ports}
                for _ in range(args.rounds):
                    for name, port in ports.items():
                        timings, rate = load(port, payload, args.requests, concurrency)
                        collected[name][0].extend(timings)
                        collected[name][1].append(rate)
                summary = {}
                for name, (timings, rates) in collected.items():
                    summary[name] = (statistics.median(timings) * 1000, percentile(timings, 0.99) * 1000, statistics.mean(rates))
                    print(f"{concurrency:>3} {name:>11} {summary[name][0]:>8.2f} {summary[name][1]:>8.2f} {summary[name][2]:>7.0f}")
                b = summary["bare"]
                for name in (n for n in summary if n != "bare"):
                    s = summary[name]
                    label = "ratio" if name == "service" else f"{name}/b"
                    print(f"{concurrency:>3} {label:>11} {s[0] / b[0]:>8.2f} {s[1] / b[1]:>8.2f} {s[2] / b[2]:>7.2f}")
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=15)


if __name__ == "__main__":
    main()
