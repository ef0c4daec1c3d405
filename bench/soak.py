"""Soak test: many keep-alive CDS clients for a while against the service as deployed, every call authenticated.

Starts ``back-spasm-cds serve`` (gunicorn with its default workers and threads) on a free loopback port and a
temporary SQLite database, in production mode with a trusted-clients file holding a freshly generated EC key, so
that no call is accepted without a JWT. Every call carries a new JWT (unique ``jti``, ``aud`` the URL called).

The clients are a few processes each running many threads, one keep-alive connection per thread, sending back to
back a mix of patient-view and order-sign calls (records of the synthetic patients the tests use, and a 200-resource
Synthea record, moved to today's clock) and feedback on a card of the client's previous answer (accepting its
suggestion, or overriding it with one of its override reasons).

Reported (JSON on standard output; progress on standard error): requests; errors by status (anything but 200,
plus connection errors and timeouts); p50/p99 latency, overall and per call kind; answers that differ from a
single-client run of the same request (cards compared without uuids and without the instants the service takes
from its clock); the largest RSS of any gunicorn worker, sampled through the run; and the service's log lines of
every request that was not answered 200. Targets: no errors, every answer the same as single-client, worker RSS at
most 150 MB.

    python bench/soak.py [--clients 64] [--seconds 60] [--processes 4] [--worker-class gevent|gthread]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py sits beside this file: keep this folder off the import path so the standard library's http loads.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import date, datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from tests.patients import (  # noqa: E402
    CLOCK,
    CYCLOBENZAPRINE_10,
    ICD,
    PHENELZINE,
    SERTRALINE,
    TENS_DEVICE,
    Patient,
    when,
)
from tests.service_helpers import USER, draft_bundle, resource_type_of, searchset  # noqa: E402

ISSUER = "https://ehr.soak.example.org"
KID = "soak-1"
PATIENT_VIEW = "back-spasm-treatment-pathway-patient-view"
ORDER_SIGN = "back-spasm-order-review-order-sign"
CAUDA_EQUINA = (ICD, "G83.4", "Cauda equina syndrome")
#: Share of each kind of call in the mix.
MIX = {"patient-view": 0.45, "order-sign": 0.35, "feedback": 0.20}
HOOK_INSTANCE = "@hook-instance@"
RSS_TARGET_MB = 150
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANT = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})")
DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?")


# -- the requests -------------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One hook request, sent again and again with a fresh hookInstance."""

    name: str
    service: str
    body: bytes
    instants: frozenset[bytes] = frozenset()


def shifted(value: Any, now: datetime) -> Any:
    """JSON data with every date and date-time moved from the tests' clock to ``now`` (dates by whole days), so that
    onsets, pain scores and orders are as recent as the tests mean them."""
    if isinstance(value, dict):
        return {k: shifted(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [shifted(v, now) for v in value]
    if isinstance(value, str) and DATE_TEXT.fullmatch(value):
        if "T" not in value:
            return (date.fromisoformat(value) + (now.date() - CLOCK.date())).isoformat()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return (moment + (now - CLOCK)).isoformat(timespec="seconds").replace("+00:00", "Z")
    return value


def prefetch(templates: dict[str, str], resources: list[dict]) -> dict[str, Any]:
    """Every prefetch key of a service answered from a record, as a complete client answers it."""
    out: dict[str, Any] = {}
    for key, template in templates.items():
        rtype = resource_type_of(template)
        matches = [r for r in resources if r["resourceType"] == rtype]
        out[key] = (matches[0] if matches else None) if "?" not in template else searchset(matches)
    return out


def request(hook: str, patient_id: str, resources: list[dict], templates: dict[str, str], drafts: Iterable[dict] = ()) -> dict:
    """A complete hook request for a record (drafts in the context on order-sign), its hookInstance a placeholder."""
    context: dict[str, Any] = {"userId": USER, "patientId": patient_id}
    if hook != "patient-view":
        context["draftOrders"] = draft_bundle(drafts)
    return {"hook": hook, "hookInstance": HOOK_INSTANCE, "context": context, "prefetch": prefetch(templates, resources)}


def synthea_record() -> tuple[str, list[dict]]:
    """The 200-resource record of bench/apply.py (a Synthea history with a back spasm, a pain score, sertraline)."""
    from apply import build_record

    record = build_record(200)
    return record[0]["id"], record


def scenarios(templates: dict[str, dict[str, str]], now: datetime) -> list[Scenario]:
    """The records of the tests' synthetic patients, with drafts on order-sign."""
    views: list[tuple[str, str, list[dict]]] = []
    acute = Patient(45, patient_id="soak-acute")
    acute.spasm(20.5)
    acute.pain(8)
    views.append(("pv-acute-severe", acute.id, acute.resources))
    serotonergic = Patient(56, patient_id="soak-sertraline")
    serotonergic.spasm(30.5)
    serotonergic.medication(SERTRALINE)
    views.append(("pv-sertraline", serotonergic.id, serotonergic.resources))
    older = Patient(70, patient_id="soak-older")
    older.spasm(days_ago=10.2)
    older.physical_therapy()
    views.append(("pv-older-subacute", older.id, older.resources))
    flagged = Patient(50, patient_id="soak-red-flag")
    flagged.spasm(20.5)
    flagged.condition(CAUDA_EQUINA, onset_value=when(days_ago=1))
    views.append(("pv-red-flag", flagged.id, flagged.resources))
    views.append(("pv-synthea-200", *synthea_record()))

    signs: list[tuple[str, str, list[dict], list[dict]]] = []
    long_course = Patient(45, patient_id="soak-30-days")
    long_course.spasm(20.5)
    signs.append(("os-cyclobenzaprine-30-days", long_course.id, long_course.resources,
                  [long_course.draft_medication(CYCLOBENZAPRINE_10, days=30, draft_id="draft-cbz-30")]))
    maoi = Patient(45, patient_id="soak-maoi")
    maoi.spasm(20.5)
    maoi.medication(PHENELZINE)
    signs.append(("os-cyclobenzaprine-maoi", maoi.id, maoi.resources, [maoi.draft_medication(CYCLOBENZAPRINE_10, draft_id="draft-cbz-maoi")]))
    elderly = Patient(72, patient_id="soak-elderly")
    elderly.spasm(days_ago=3.2)
    signs.append(("os-cyclobenzaprine-older", elderly.id, elderly.resources,
                  [elderly.draft_medication(CYCLOBENZAPRINE_10, draft_id="draft-cbz-older")]))
    tens = Patient(45, patient_id="soak-tens")
    tens.spasm(20.5)
    signs.append(("os-tens", tens.id, tens.resources, [tens.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="draft-tens")]))

    bodies = [(name, PATIENT_VIEW, request("patient-view", pid, resources, templates[PATIENT_VIEW])) for name, pid, resources in views]
    bodies += [(name, ORDER_SIGN, request("order-sign", pid, resources, templates[ORDER_SIGN], drafts))
               for name, pid, resources, drafts in signs]
    out = []
    for name, service, body in bodies:
        raw = json.dumps(shifted(body, now), separators=(",", ":")).encode()
        out.append(Scenario(name, service, raw, frozenset(INSTANT.findall(raw))))
    return out


def normalised(answer: bytes, instants: frozenset[bytes]) -> bytes:
    """An answer with its uuids and the instants it did not get from the request (the service's clock) masked."""
    answer = UUID.sub(b"<uuid>", answer)
    return INSTANT.sub(lambda m: m.group(0) if m.group(0) in instants else b"<now>", answer)


# -- authentication ----------------------------------------------------------------------------------------------------


class Signer:
    """Signs a fresh JWT for each call with the trusted client's key."""

    def __init__(self, pem: bytes, base: str):
        self.key = serialization.load_pem_private_key(pem, password=None)
        self.base = base

    def header(self, path: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": self.base + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        return "Bearer " + jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID, "typ": "JWT"})


def trusted_clients(key: ec.EllipticCurvePrivateKey, folder: Path) -> Path:
    """The trusted-clients file: one issuer, the public half of ``key`` inline."""
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    path = folder / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISSUER, "jwks": {"keys": [{**public, "kid": KID, "alg": "ES256", "use": "sig"}]}}]}))
    return path


# -- the server --------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, folder: Path, clients: Path, worker_class: str | None = None) -> subprocess.Popen:
    """``back-spasm-cds serve`` with its default gunicorn settings, production mode, its log in ``folder``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACK_SPASM_CDS_")}
    env.update(PYTHONPATH=str(ROOT), BACK_SPASM_CDS_DATABASE=str(folder / "soak.sqlite"), BACK_SPASM_CDS_TRUSTED_CLIENTS=str(clients),
               BACK_SPASM_CDS_MODE="production", BACK_SPASM_CDS_ALLOW_UNAUTHENTICATED="false",
               BACK_SPASM_CDS_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
    if worker_class:
        env["BACK_SPASM_CDS_WORKER_CLASS"] = worker_class
    with open(folder / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service stopped: {(folder / 'serve.log').read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the service did not start: {(folder / 'serve.log').read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the master and its workers (the process group), SIGKILL if they do not stop."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def workers(master: int) -> list[int]:
    """Pids of the gunicorn workers (the master's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """The largest RSS of each worker of the master, sampled every quarter second until stopped."""

    def __init__(self, master: int):
        super().__init__(daemon=True)
        self.master = master
        self.largest: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in workers(self.master):
                value = rss_mb(pid)
                if value is not None:
                    self.largest[pid] = max(value, self.largest.get(pid, 0.0))
            self.stop.wait(0.25)


def discovery(port: int, signer: Signer) -> dict[str, dict[str, str]]:
    """The prefetch templates of every service, from GET /cds-services."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/cds-services", headers={"Authorization": signer.header("/cds-services")})
    answer = connection.getresponse()
    if answer.status != 200:
        raise RuntimeError(f"discovery answered {answer.status}: {answer.read()[:500]!r}")
    return {s["id"]: s.get("prefetch", {}) for s in json.loads(answer.read())["services"]}


# -- the clients ---------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one client process saw."""

    statuses: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    mismatches: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def add(self, kind: str, status: str, seconds: float) -> None:
        """One call: its status and how long it took."""
        self.statuses[status] += 1
        self.latencies.setdefault(kind, []).append(seconds)

    def merge(self, other: "Tally") -> None:
        """Add what another process saw."""
        self.statuses.update(other.statuses)
        self.mismatches.update(other.mismatches)
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, []).extend(values)
        self.samples.extend(other.samples[: max(0, 10 - len(self.samples))])


class Client:
    """One CDS client on its own keep-alive connection: a hook call, or feedback on a card of its last answer."""

    def __init__(self, number: int, port: int, signer: Signer, scenarios: list[Scenario], references: dict[str, bytes], tally: Tally,
                 lock: threading.Lock):
        self.port, self.signer, self.scenarios, self.references = port, signer, scenarios, references
        self.tally, self.lock = tally, lock
        self.random = random.Random(number)
        self.connection: http.client.HTTPConnection | None = None
        self.last: tuple[str, bytes] | None = None

    def post(self, path: str, body: bytes, timeout: float = 30) -> tuple[int | str, bytes]:
        """POST with a fresh JWT; the status (or 'connection-error'/'timeout') and the body."""
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            self.connection.request("POST", path, body=body, headers={"Content-Type": "application/json", "Accept": "application/json",
                                                                      "Authorization": self.signer.header(path)})
            answer = self.connection.getresponse()
            data = answer.read()
            if (answer.getheader("Connection") or "").lower() == "close":
                self.close()
            return answer.status, data
        except TimeoutError:
            self.close()
            return "timeout", b""
        except (OSError, http.client.HTTPException):
            self.close()
            return "connection-error", b""

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def step(self) -> None:
        """One call of the mix."""
        draw = self.random.random()
        if draw < MIX["feedback"] and self.last is not None:
            self.feedback()
            return
        hook = "patient-view" if draw < MIX["feedback"] + MIX["patient-view"] else "order-sign"
        service = PATIENT_VIEW if hook == "patient-view" else ORDER_SIGN
        scenario = self.random.choice([s for s in self.scenarios if s.service == service])
        body = scenario.body.replace(HOOK_INSTANCE.encode(), str(uuid.uuid4()).encode())
        started = time.perf_counter()
        status, data = self.post(f"/cds-services/{scenario.service}", body)
        self.record(hook, status, time.perf_counter() - started, scenario.name, normalised(data, scenario.instants) if status == 200 else None)
        if status == 200 and b'"uuid"' in data:
            self.last = (scenario.service, data)

    def feedback(self) -> None:
        """Feedback on the first card of the last answer: its suggestion accepted, else overridden with its first reason."""
        service, data = self.last
        self.last = None
        card = json.loads(data)["cards"][0]
        item: dict[str, Any] = {"card": card["uuid"], "outcomeTimestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        if card.get("suggestions"):
            item.update(outcome="accepted", acceptedSuggestions=[{"id": card["suggestions"][0]["uuid"]}])
        else:
            item["outcome"] = "overridden"
            if card.get("overrideReasons"):
                reason = card["overrideReasons"][0]
                item["overrideReason"] = {"reason": {k: reason[k] for k in ("system", "code", "display") if k in reason},
                                          "userComment": "Discussed with the patient."}
        started = time.perf_counter()
        status, answer = self.post(f"/cds-services/{service}/feedback", json.dumps({"feedback": [item]}).encode())
        self.record("feedback", status, time.perf_counter() - started, "feedback", answer if status == 200 else None)

    def record(self, kind: str, status: int | str, seconds: float, name: str, answer: bytes | None) -> None:
        """Count the call, and its answer if it differs from the single-client answer to the same request."""
        with self.lock:
            self.tally.add(kind, str(status), seconds)
            if answer is not None and answer != self.references[name]:
                self.tally.mismatches[name] += 1
                if len(self.tally.samples) < 3:
                    self.tally.samples.append(f"{name}: {answer[:300]!r}")


def client_process(number: int, threads: int, port: int, pem: bytes, scenario_list: list[Scenario], references: dict[str, bytes],
                   start: Any, deadline_in: float, out: Any) -> None:
    """``threads`` clients in one process until the deadline; the tally goes to ``out``."""
    signer = Signer(pem, f"http://127.0.0.1:{port}")
    tally, lock = Tally(), threading.Lock()
    clients = [Client(number * 1000 + i, port, signer, scenario_list, references, tally, lock) for i in range(threads)]
    start.wait()
    deadline = time.monotonic() + deadline_in

    def run(client: Client) -> None:
        while time.monotonic() < deadline:
            client.step()
        client.close()

    pool = [threading.Thread(target=run, args=(c,)) for c in clients]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(tally)


def references_of(port: int, signer: Signer, scenario_list: list[Scenario]) -> dict[str, bytes]:
    """Each request's answer from a single client, one call at a time (normalised), and feedback's answer."""
    client = Client(0, port, signer, scenario_list, {}, Tally(), threading.Lock())
    out: dict[str, bytes] = {}
    for scenario in scenario_list:
        status, data = client.post(f"/cds-services/{scenario.service}",
                                   scenario.body.replace(HOOK_INSTANCE.encode(), str(uuid.uuid4()).encode()))
        if status != 200:
            raise RuntimeError(f"{scenario.name}: single-client call answered {status}: {data[:500]!r}")
        out[scenario.name] = normalised(data, scenario.instants)
        if b'"uuid"' in data and "feedback" not in out:
            client.last = (scenario.service, data)
            item = {"card": json.loads(data)["cards"][0]["uuid"], "outcome": "overridden",
                    "outcomeTimestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            status, answer = client.post(f"/cds-services/{scenario.service}/feedback", json.dumps({"feedback": [item]}).encode())
            if status != 200:
                raise RuntimeError(f"single-client feedback answered {status}: {answer[:500]!r}")
            out["feedback"] = answer
    client.close()
    return out


# -- the report --------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def server_problems(log: Path) -> dict[str, Any]:
    """The service's log lines of requests not answered 200, counted by status and path, with one line of each; and
    every error line (unexpected errors, refused database writes)."""
    by_kind: Counter = Counter()
    examples: dict[str, str] = {}
    errors: Counter = Counter()
    error_examples: dict[str, str] = {}
    logged = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "[ERROR]" in line or "[CRITICAL]" in line or "Traceback" in line:
                errors[line[:80]] += 1
            continue
        logged += entry.get("event") == "request"
        if entry.get("event") == "request" and entry.get("status") != 200:
            key = f"{entry.get('status')} {entry.get('path')}"
            by_kind[key] += 1
            examples.setdefault(key, line[:600])
        elif entry.get("level") in ("error", "critical", "warning"):
            key = f"{entry.get('logger')} {entry.get('event') or entry.get('message', '')[:80]}"
            errors[key] += 1
            error_examples.setdefault(key, line[:600])
    return {"requests_logged": logged, "not_200": dict(by_kind), "not_200_examples": examples, "log_errors": dict(errors),
            "log_error_examples": error_examples}


def summary(args: argparse.Namespace, tally: Tally, elapsed: float, rss: dict[int, float], drift: list[str], problems: dict[str, Any]) -> dict:
    """The JSON report, with whether each target was met."""
    every = [t for values in tally.latencies.values() for t in values]
    errors = {status: n for status, n in tally.statuses.items() if status != "200"}
    largest = max(rss.values(), default=0.0)
    return {
        "worker_class": args.worker_class or "default", "clients": args.clients, "seconds": round(elapsed, 1), "requests": len(every),
        "requests_per_second": round(len(every) / elapsed, 1) if elapsed else None,
        "by_kind": {kind: len(values) for kind, values in tally.latencies.items()},
        "errors": sum(errors.values()), "errors_by_status": errors,
        "latency_ms": {"p50": round(statistics.median(every) * 1000, 1) if every else None,
                       "p99": round(percentile(every, 0.99) * 1000, 1) if every else None,
                       **{kind: {"p50": round(statistics.median(v) * 1000, 1), "p99": round(percentile(v, 0.99) * 1000, 1)}
                          for kind, v in tally.latencies.items()}},
        "answers_differing_from_single_client": dict(tally.mismatches), "differing_samples": tally.samples,
        "single_client_answers_changed_during_run": drift,
        "max_worker_rss_mb": round(largest, 1), "worker_rss_mb": {str(pid): round(v, 1) for pid, v in sorted(rss.items())},
        "targets_met": {"no_errors": not errors, "same_as_single_client": not tally.mismatches, f"worker_rss_at_most_{RSS_TARGET_MB}_mb":
                        0 < largest <= RSS_TARGET_MB},
        "server_log": problems,
    }


def run_load(args: argparse.Namespace, port: int, pem: bytes, scenario_list: list[Scenario], references: dict[str, bytes]) -> Tally:
    """The clients, spread over processes, all starting together; their tallies merged."""
    processes = max(1, min(args.processes, args.clients))
    shares = [args.clients // processes + (1 if i < args.clients % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(processes + 1), context.Queue()
    pool = [context.Process(target=client_process, args=(i, n, port, pem, scenario_list, references, start, args.seconds, out))
            for i, n in enumerate(shares)]
    for process in pool:
        process.start()
    start.wait()
    tally = Tally()
    for _ in pool:
        tally.merge(out.get(timeout=args.seconds + 120))
    for process in pool:
        process.join(30)
    return tally



def main() -> None:
    """Start the service, take the single-client answers, run the clients, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive clients (default 64)")
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients send (default 60)")
    parser.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over (default 4)")
    parser.add_argument("--worker-class", choices=("gevent", "gthread"), default=None, help="the service's worker_class (default: its default)")
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        port = free_port()
        server = start_server(port, folder, trusted_clients(key, folder), args.worker_class)
        try:
            signer = Signer(pem, f"http://127.0.0.1:{port}")
            scenario_list = scenarios(discovery(port, signer), datetime.now(timezone.utc))
            references = references_of(port, signer, scenario_list)
            print(f"service on port {port}: {len(workers(server.pid))} workers; {len(scenario_list)} requests; "
                  f"{args.clients} clients for {args.seconds:.0f} s", file=sys.stderr)
            sampler = RssSampler(server.pid)
            sampler.start()
            tally = run_load(args, port, pem, scenario_list, references)
            sampler.stop.set()
            sampler.join()
            after = references_of(port, signer, scenario_list)
            drift = [name for name in references if name != "feedback" and after[name] != references[name]]
        finally:
            stop_server(server)
        print(json.dumps(summary(args, tally, args.seconds, sampler.largest, drift, server_problems(folder / "serve.log")), indent=2))


if __name__ == "__main__":
    main()
