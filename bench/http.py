"""Benchmark: the CDS Hooks service over HTTP against a bare endpoint, side by side, same server and load.

Both run under gunicorn on loopback with the same settings (``--worker-class``, ``--workers``, ``--threads``;
by default gthread, one worker per core, 4 threads; ``--worker-class gevent`` is the service's own default, and the
service then runs as ``serve`` runs it: patched by gevent before it is built, its database calls in the worker's
pool of real threads): the service answers patient-view for a 200-resource prefetch
(record of bench/apply.py); the bare endpoint is a Flask route that parses the same body with orjson and answers
``{}``. Clients are separate processes with keep-alive connections, each sending requests back to back; both
servers get the same number of requests at the same concurrency, alternating in rounds so drift on the machine
hits both.

``--jwt`` runs the service in production mode with a trusted client whose EC key signs a fresh token (unique
``jti``) for every call, as the CDS Hooks Sandbox does; the tokens are signed before the clock starts, and the bare
endpoint gets the same header and ignores it. ``--database URL`` keeps the service's issued cards and token ids in
that database (``postgresql://...``, or an SQLite path; default a temporary SQLite file).

With ``--split`` a third server runs the service with its $apply replaced by a replay of the first answer
(``no-engine``): everything else (parsing, checks, prefetch, cards, the durable card record, auth, CORS,
logs) still runs, so the gap between it and the service is the protocol's own cost.

With ``--instances N`` only the service runs, as N servers on the one database, and each client keeps to one of
them (client i to server i mod N): reported are the latencies over all and the requests per second of each
instance.

``CPU ms`` is the CPU time the server's workers used per call (from /proc): unlike the latencies, other work on a
shared machine hardly moves it. Also reported for each server: its first request after start (a fresh connection, before any warm-up), the
slowest of the first ``2 x workers`` requests each on a fresh connection (each worker's first, whichever worker
takes it), and the largest RSS of its workers after the run.

    python bench/http.py [--requests 400] [--concurrency 1,4] [--rounds 3] [--split] [--jwt] [--database URL]
                         [--instances N] [--worker-class gthread|gevent] [--workers N] [--threads 4]
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
import uuid  # noqa: E402
from datetime import datetime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from soak import ISSUER, KID, rss_mb, trusted_clients, workers  # noqa: E402

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

#: The service's clock, fixed so that the record's dates read the same on every run (tokens are issued at it too).
CLOCK = "2026-11-25T10:00:00+00:00"

SERVICE_APP = f'''
import gc
import os
from datetime import datetime
GEVENT = os.environ.get("BENCH_WORKER_CLASS") == "gevent"
if GEVENT:  # as serve does: gevent's patching before the application is built
    from service.server import _patch_for_gevent
    _patch_for_gevent()
from service import create_app
from service.config import Settings
app = create_app(Settings.load(), clock=lambda: datetime.fromisoformat("{CLOCK}"))
if GEVENT:  # and the database's calls in the worker's pool of real threads
    from service.server import _database_calls_in_threads
    _database_calls_in_threads(app)
try:  # as serve does: warm before forking, and in each worker after (POST_FORK)
    from service.cds_hooks.hooks import warm_up
except ImportError:  # a version without it
    warm_up = None
if warm_up is not None:
    warm_up(app)
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


#: Time a server is given, once it accepts connections, for its workers to finish starting (the service's warm up
#: after forking is part of starting, not of its first request).
STARTING_SECONDS = 3.0

#: gunicorn settings of the service's servers: each worker warms up (and prepares its database) after it forks, as under serve.
POST_FORK = '''
import sys


def post_fork(server, worker):
    import service.cds_hooks.hooks as hooks
    for name in ("warm_up", "prepare_storage"):  # those the version measured has
        if hasattr(hooks, name):
            getattr(hooks, name)(sys.modules["{module}"].app)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body() -> bytes:
    """A patient-view request whose prefetch holds the 200-resource record, keyed as the service's templates."""
    from apply import build_record

    from protocol.engine.apply import Engine
    from protocol.engine.content import load_content
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


def start(module_text: str, name: str, port: int, workdir: Path, env: dict, args: argparse.Namespace) -> subprocess.Popen:
    """A gunicorn server of the app in ``module_text`` on ``port``, with the benchmark's worker settings."""
    (workdir / f"{name}.py").write_text(module_text)
    (workdir / f"{name}_conf.py").write_text(POST_FORK.format(module=name) if "create_app" in module_text else "")
    command = [sys.executable, "-m", "gunicorn", f"{name}:app", "-b", f"127.0.0.1:{port}", "-k", args.worker_class, "-w", str(args.workers),
               "--threads", str(args.threads), "--preload", "--log-level", "warning", "-c", str(workdir / f"{name}_conf.py")]
    log = open(workdir / f"{name}.log", "wb")
    process = subprocess.Popen(command, cwd=workdir, env=dict(env, BACK_SPASM_CDS_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}"),
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 90
    while time.time() < deadline:
        if len(workers(process.pid)) >= args.workers:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return process
            except OSError:
                pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server on {port} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}")


def tokens(pem: bytes | None, port: int, count: int) -> list[str | None]:
    """A fresh JWT for each of ``count`` calls to the service on ``port`` (none without a key)."""
    if pem is None:
        return [None] * count
    key = serialization.load_pem_private_key(pem, password=None)
    issued = int(datetime.fromisoformat(CLOCK).timestamp())
    claims = {"iss": ISSUER, "aud": f"http://127.0.0.1:{port}/cds-services/{SERVICE}", "iat": issued, "exp": issued + 300}
    return ["Bearer " + jwt.encode(dict(claims, jti=str(uuid.uuid4())), key, algorithm="ES256", headers={"kid": KID, "typ": "JWT"})
            for _ in range(count)]


def post(connection: http.client.HTTPConnection, payload: bytes, token: str | None) -> tuple[float, int, bool]:
    """One call: its time, its status and whether the server closes the connection after it."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = token
    started = time.perf_counter()
    connection.request("POST", f"/cds-services/{SERVICE}", body=payload, headers=headers)
    response = connection.getresponse()
    response.read()
    return time.perf_counter() - started, response.status, response.getheader("Connection", "").lower() == "close"


def client(task: tuple[int, bytes, int, bytes | None]) -> list[float]:
    port, payload, count, pem = task
    signed = tokens(pem, port, count)
    connection = http.client.HTTPConnection("127.0.0.1", port)
    timings = []
    for token in signed:
        seconds, status, closed = post(connection, payload, token)
        timings.append(seconds)
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {port}")
        if closed:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.close()
    return timings


def load(ports: list[int], payload: bytes, requests: int, concurrency: int, pem: bytes | None) -> tuple[list[float], list[float]]:
    """``requests`` calls from ``concurrency`` clients, client i on ``ports[i % len(ports)]``: every call's time, and
    the requests per second each port answered."""
    per_client = max(1, requests // concurrency)
    tasks = [(ports[i % len(ports)], payload, per_client, pem) for i in range(concurrency)]
    with multiprocessing.Pool(concurrency) as pool:
        started = time.perf_counter()
        results = pool.map(client, tasks)
        elapsed = time.perf_counter() - started
    rates = [sum(len(r) for (port, *_), r in zip(tasks, results) if port == p) / elapsed for p in ports]
    return [t for r in results for t in r], rates


def first_requests(port: int, payload: bytes, count: int, pem: bytes | None) -> list[float]:
    """The first ``count`` calls after start, each on a fresh connection (so each worker gets its first one)."""
    timings = []
    for token in tokens(pem, port, count):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        seconds, status, _ = post(connection, payload, token)
        connection.close()
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {port} on a first request")
        timings.append(seconds)
    return timings


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def largest_rss(process: subprocess.Popen) -> float:
    return max((rss_mb(pid) or 0.0 for pid in workers(process.pid)), default=0.0)


def cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time (user and system) its workers have used so far: on a shared machine, the cost of a call that other
    people's work does not inflate as it does the wall-clock latency."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in workers(process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per server per round and concurrency")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also measure the service with $apply replayed (no-engine)")
    parser.add_argument("--jwt", action="store_true", help="production mode: every call carries a fresh signed JWT")
    parser.add_argument("--database", help="the service's database URL (default: a temporary SQLite file)")
    parser.add_argument("--instances", type=int, default=0, help="run N service servers on the one database, no bare endpoint")
    parser.add_argument("--worker-class", default="gthread", choices=("gthread", "gevent"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    payload = body()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACK_SPASM_CDS_")}
        env.update(PYTHONPATH=str(ROOT), BACK_SPASM_CDS_DATABASE=args.database or str(workdir / "bench.sqlite"),
                   BACK_SPASM_CDS_LOG_LEVEL="WARNING", BENCH_WORKER_CLASS=args.worker_class)
        pem = None
        if args.jwt:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            env.update(BACK_SPASM_CDS_MODE="production", BACK_SPASM_CDS_ALLOW_UNAUTHENTICATED="false",
                       BACK_SPASM_CDS_TRUSTED_CLIENTS=str(trusted_clients(key, workdir)))
        if args.instances:
            apps = {f"service-{i + 1}": SERVICE_APP for i in range(args.instances)}
        else:
            apps = {"service": SERVICE_APP, "bare": BARE_APP} | ({"no-engine": NO_ENGINE_APP} if args.split else {})
        ports = {name: free_port() for name in apps}
        servers: dict[str, subprocess.Popen] = {}
        try:
            firsts = {}
            for name, port in ports.items():  # one at a time, so each first request has the machine to itself
                servers[name] = start(apps[name], f"app_{port}", port, workdir, env, args)
                time.sleep(STARTING_SECONDS)
                firsts[name] = first_requests(port, payload, 2 * args.workers, pem)
            for port in ports.values():  # warm up every worker
                load([port], payload, 40, 4, pem)
            print(f"body {len(payload) / 1024:.0f} KB; gunicorn {args.worker_class}, {args.workers} workers x {args.threads} threads; "
                  f"{args.rounds} rounds; database {'PostgreSQL' if (args.database or '').startswith('postgres') else 'SQLite'}; "
                  f"{'a fresh JWT on every call' if args.jwt else 'no JWT'}")
            if args.instances:
                measure_instances(args, ports, servers, payload, pem)
            else:
                measure_side_by_side(args, ports, servers, payload, pem)
            print(f"{'server':>11} {'first ms':>9} {'firsts max':>11} {'RSS MB':>7}")
            for name, timings in firsts.items():
                print(f"{name:>11} {timings[0] * 1000:>9.2f} {max(timings) * 1000:>11.2f} {largest_rss(servers[name]):>7.1f}")
        finally:
            for server in servers.values():
                server.terminate()
            for server in servers.values():
                server.wait(timeout=15)


def measure_side_by_side(args: argparse.Namespace, ports: dict[str, int], servers: dict[str, subprocess.Popen], payload: bytes,
                         pem: bytes | None) -> None:
    """The service (and no-engine) against the bare endpoint at each concurrency: p50, p99, requests/s, the workers' CPU
    time per call, and the ratios."""
    print(f"{'c':>3} {'endpoint':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'CPU ms':>7}")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        collected: dict[str, tuple[list[float], list[float], list[float]]] = {name: ([], [], []) for name in ports}
        for _ in range(args.rounds):
            for name, port in ports.items():
                used = cpu_seconds(servers[name])
                timings, rates = load([port], payload, args.requests, concurrency, pem)
                collected[name][0].extend(timings)
                collected[name][1].append(rates[0])
                collected[name][2].append((cpu_seconds(servers[name]) - used) / len(timings))
        summary = {}
        for name, (timings, rates, cpu) in collected.items():
            summary[name] = (statistics.median(timings) * 1000, percentile(timings, 0.99) * 1000, statistics.mean(rates),
                             statistics.mean(cpu) * 1000)
            print(f"{concurrency:>3} {name:>11} {summary[name][0]:>8.2f} {summary[name][1]:>8.2f} {summary[name][2]:>7.0f} {summary[name][3]:>7.2f}")
        b = summary["bare"]
        for name in (n for n in summary if n != "bare"):
            s = summary[name]
            label = "ratio" if name == "service" else f"{name}/b"
            print(f"{concurrency:>3} {label:>11} {s[0] / b[0]:>8.2f} {s[1] / b[1]:>8.2f} {s[2] / b[2]:>7.2f} {s[3] / b[3]:>7.2f}")


def measure_instances(args: argparse.Namespace, ports: dict[str, int], servers: dict[str, subprocess.Popen], payload: bytes,
                      pem: bytes | None) -> None:
    """N service instances on one database, the clients spread over them: p50, p99, requests/s over all and of each,
    and the workers' CPU time per call."""
    print(f"{'c':>3} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'CPU ms':>7}  req/s per instance")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        timings: list[float] = []
        rates: list[list[float]] = []
        used = sum(cpu_seconds(s) for s in servers.values())
        for _ in range(args.rounds):
            more, per_port = load(list(ports.values()), payload, args.requests, concurrency, pem)
            timings.extend(more)
            rates.append(per_port)
        cpu = (sum(cpu_seconds(s) for s in servers.values()) - used) / len(timings)
        per_instance = [statistics.mean(r[i] for r in rates) for i in range(len(ports))]
        print(f"{concurrency:>3} {statistics.median(timings) * 1000:>8.2f} {percentile(timings, 0.99) * 1000:>8.2f} "
              f"{sum(per_instance):>7.0f} {cpu * 1000:>7.2f}  {', '.join(f'{name} {rate:.0f}' for name, rate in zip(ports, per_instance))}")


if __name__ == "__main__":
    main()
