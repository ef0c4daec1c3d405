"""A FHIR server that misbehaves in every way the service must survive: never a 5xx, never a hang, no token leaked.

Each case is a real HTTP server on 127.0.0.1, written on raw sockets so that it can hang, drip bytes, stream
without end or send something that is not HTTP, and the service is told to read missing prefetch from it with a
bearer token. Whatever the server does, the hook call is answered within the time budget plus a small margin:
a 412 OperationOutcome naming what could not be read, or a 200 when everything needed arrived. The token never
goes to another origin (a second loopback server stands for one and must receive nothing), and no thread of the
service is left blocked on a server once the calls are answered. The calls run in parallel, each against its
own server, so the file takes a few seconds.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service import state_of
from tests.patients import CYCLOBENZAPRINE_5, Patient
from tests.service_helpers import (
    PATIENT_VIEW,
    call,
    cards_of,
    fhir_search,
    hook_body,
    make_app,
    outcome_diagnostics,
    resource_type_of,
    searchset,
    templates,
    without_uuids,
)

TOKEN = "hostile-test-token-51d0"
AUTHORIZATION = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read",
                 "subject": "back-spasm-cds"}
PATIENT_ID = "pt-hostile-7c3e"
BUDGET = 1.5
#: How far past the budget an answer may come.
MARGIN = 2.0
#: Seconds between the bytes of a dripping server.
DRIP_INTERVAL = 1.0


# -- a server on raw sockets ---------------------------------------------------------------------------------


@dataclass
class Received:
    """One request a server read: its path and headers (names in lower case)."""

    path: str
    headers: dict[str, str]


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1 that hands each request to ``behaviour`` on a thread of its own.

    It counts every connection accepted and keeps every request head read; with ``behaviour`` None it listens but
    never accepts (connections wait in the backlog). With ``tls`` it speaks HTTPS; with ``reads_request`` False the
    behaviour gets the connection as soon as it is accepted. ``stop`` closes the listening socket and shuts every
    open connection, so that a behaviour that waits forever ends too; ``join`` waits for its threads.
    """

    def __init__(self, behaviour: Callable[["Exchange"], None] | None, context: dict[str, Any], *, scheme: str = "http",
                 tls: ssl.SSLContext | None = None, reads_request: bool = True):
        self.behaviour = behaviour
        self.context = context
        self.tls = tls
        self.reads_request = reads_request
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.origin = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.url = self.origin + "/fhir"
        self.received: list[Received] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        if behaviour is not None:
            self._threads.append(threading.Thread(target=self._accept, name="hostile-accept", daemon=True))
            self._threads[0].start()

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-serve", daemon=True)
            with self._lock:
                self.connections += 1
                self._open.add(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not self.reads_request:
                self.behaviour(Exchange(self, conn, ""))
                return
            if self.tls:
                conn = self._replace(conn, self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False))
                conn.do_handshake()
            head = self._read_head(conn)
            if head is not None:
                with self._lock:
                    self.received.append(head)
                self.behaviour(Exchange(self, conn, head.path))
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _replace(self, old: socket.socket, new: socket.socket) -> socket.socket:
        """Keep the TLS socket wrapped around a connection as the one to shut on stop."""
        with self._lock:
            self._open.discard(old)
            self._open.add(new)
        return new

    def _read_head(self, conn: socket.socket) -> Received | None:
        """The request line and headers, or None when the client goes away or the server stops first."""
        conn.settimeout(0.1)
        data = b""
        while b"\r\n\r\n" not in data:
            if self.stopping.is_set():
                return None
            try:
                more = conn.recv(65536)
            except TimeoutError:
                continue
            if not more:
                return None
            data += more
        lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        conn.settimeout(None)
        return Received(lines[0].split(" ")[1], headers)

    def pause(self, seconds: float) -> bool:
        """Wait; False when the server is stopping (the behaviour should end)."""
        return not self.stopping.wait(seconds)

    def stop(self) -> None:
        """Close the server: no more connections, and those open are shut (see :meth:`join`)."""
        self.stopping.set()
        self.listener.close()
        with self._lock:
            connections = list(self._open)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self) -> None:
        """Wait for the server's threads to end after :meth:`stop`."""
        for thread in self.threads():
            thread.join(timeout=5)


@dataclass
class Exchange:
    """A request being answered: the server, the connection and the path asked for."""

    server: LoopbackServer
    conn: socket.socket
    path: str

    @property
    def other(self) -> str:
        """The base URL of another origin, where nothing may ever be sent."""
        return self.server.context["other"]

    def respond(self, status: int, body: bytes, *headers: str, content_type: str = "application/fhir+json") -> None:
        head = [f"HTTP/1.1 {status} Status", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                "Connection: close", *headers]
        self.conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def respond_json(self, value: Any, status: int = 200) -> None:
        self.respond(status, json.dumps(value).encode())

    def send_head(self, *headers: str) -> None:
        head = ["HTTP/1.1 200 OK", "Content-Type: application/fhir+json", "Connection: close", *headers]
        self.conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

    def drip(self, data: bytes) -> None:
        """Send ``data`` a byte at a time, one every ``DRIP_INTERVAL`` seconds, until the server stops."""
        for byte in data:
            if not self.server.pause(DRIP_INTERVAL):
                return
            self.conn.sendall(bytes([byte]))

    def stream(self, chunk: bytes) -> None:
        """Send ``chunk`` again and again as fast as the client reads, until it goes away or the server stops."""
        while not self.server.stopping.is_set():
            self.conn.sendall(chunk)


# -- behaviours ------------------------------------------------------------------------------------------------

ERROR = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception", "diagnostics": "database gone"}]}
PAGE = json.dumps(searchset([])).encode()


def answer_well(x: Exchange) -> None:
    """A correct FHIR server over the patient's record: reads and patient searches."""
    resources = x.server.context["patient"].resources
    parts = urlsplit(x.path)
    segments = [s for s in parts.path.split("/") if s][1:]
    if len(segments) == 2:
        found = next((r for r in resources if r["resourceType"] == segments[0] and r["id"] == segments[1]), None)
        x.respond_json(found or ERROR, 200 if found else 404)
        return
    args = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    x.respond_json(searchset(fhir_search(resources, segments[0], args)))


def answer_late(x: Exchange) -> None:
    if x.server.pause(0.3):
        answer_well(x)


def hang(x: Exchange) -> None:
    x.server.pause(3600)


def close_at_once(x: Exchange) -> None:
    x.conn.shutdown(socket.SHUT_RDWR)


def not_http(x: Exchange) -> None:
    x.conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    hang(x)


def drip_headers(x: Exchange) -> None:
    x.conn.sendall(b"HTTP/1.1 200 OK\r\n")
    x.drip(b"Content-Type: application/fhir+json\r\n" * 1000)


def drip_body(x: Exchange) -> None:
    x.send_head(f"Content-Length: {len(PAGE)}")
    x.drip(PAGE)


def drip_chunked(x: Exchange) -> None:
    x.send_head("Transfer-Encoding: chunked")
    x.drip(b"".join(b"1\r\n" + bytes([b]) + b"\r\n" for b in PAGE) + b"0\r\n\r\n")


def drip_handshake(x: Exchange) -> None:
    """The start of a TLS record whose remaining bytes come one a second: the handshake never ends."""
    x.drip(b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000)


def redirect(status: int) -> Callable[[Exchange], None]:
    def behaviour(x: Exchange) -> None:
        x.respond(status, b"", f"Location: {x.other}{x.path.removeprefix('/fhir')}")
    return behaviour


def pages_forever(x: Exchange) -> None:
    number = int(x.path.rsplit("-", 1)[1]) if "page-" in x.path else 1
    page = searchset([])
    page["link"] = [{"relation": "next", "url": f"{x.server.url}/Condition-page-{number + 1}"}]
    x.respond_json(page)


def next_to_other_origin(x: Exchange) -> None:
    page = searchset([])
    page["link"] = [{"relation": "next", "url": f"{x.other}/Condition?page=2"}]
    x.respond_json(page)


def outcome(status: int) -> Callable[[Exchange], None]:
    def behaviour(x: Exchange) -> None:
        x.respond_json(ERROR, status)
    return behaviour


def html(x: Exchange) -> None:
    x.respond(200, b"<html><body>Service Unavailable</body></html>", content_type="text/html")


def huge_stream(x: Exchange) -> None:
    """A searchset without end and without a length: entries as fast as the client takes them."""
    x.send_head()
    x.conn.sendall(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
    x.stream(b'{"resource": {"resourceType": "Condition", "id": "c", "code": {"text": "' + b"x" * 4000 + b'"}}},')


def huge_declared(x: Exchange) -> None:
    x.send_head(f"Content-Length: {10 ** 11}")
    x.stream(b" " * 65536)


_BOMB: list[bytes] = []
_BOMB_LOCK = threading.Lock()


def gzip_bomb(x: Exchange) -> None:
    """A small gzip body that decompresses to 64 MiB."""
    with _BOMB_LOCK:
        if not _BOMB:
            _BOMB.append(gzip.compress(b'{"resourceType": "Bundle", "entry": [' + b" " * (64 << 20) + b"]}", compresslevel=6))
    x.respond(200, _BOMB[0], "Content-Encoding: gzip")


def deep_json(x: Exchange) -> None:
    x.respond(200, b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": ' + b'{"a": ' * 500
              + b"1" + b"}" * 500 + b"}]}")


def answer_other_origin(x: Exchange) -> None:
    """What another origin would answer, so that following a link there could not go unnoticed."""
    x.respond_json(searchset([]))


# -- the cases -------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A server behaviour, what the service reads from it, and the answer expected."""

    name: str
    behaviour: Callable[[Exchange], None] | None   #: None: the server never accepts the connection
    reads: str = "condition"            #: condition (the rest prefetched), everything (nothing prefetched), medication
    status: int = 412
    says: tuple[str, ...] = ()          #: words the 412 diagnostics hold besides the key
    transport: str = "http"             #: http, https (the server speaks TLS), or https-raw (the URL is https, the server does not)

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("answers well", answer_well, reads="everything", status=200),
    Case("answers within the budget", answer_late, status=200),
    Case("never accepts the connection", None, says=("no usable answer",)),
    Case("accepts and never answers", hang, says=("no usable answer",)),
    Case("never answers any query", hang, reads="everything", says=("no usable answer",)),
    Case("closes without answering", close_at_once, says=("no usable answer",)),
    Case("answers something that is not HTTP", not_http, says=("no usable answer",)),
    Case("drips its headers", drip_headers, says=("no usable answer",)),
    Case("drips its body", drip_body, says=("no usable answer",)),
    Case("drips a chunked body", drip_chunked, says=("no usable answer",)),
    Case("drips a medication", drip_body, reads="medication", says=("no usable answer",)),
    Case("redirects 301 to another origin", redirect(301), says=("no usable answer",)),
    Case("redirects 302 to another origin", redirect(302), says=("no usable answer",)),
    Case("redirects 307 to another origin", redirect(307), says=("no usable answer",)),
    Case("pages forever", pages_forever, says=("more than 10 pages",)),
    Case("links the next page to another origin", next_to_other_origin, says=("outside the FHIR server's base",)),
    Case("answers an OperationOutcome with 200", outcome(200), says=("OperationOutcome",)),
    Case("answers an OperationOutcome with 404", outcome(404), says=("no usable answer",)),
    Case("answers an OperationOutcome with 500", outcome(500), says=("no usable answer",)),
    Case("answers HTML", html, says=("no usable answer",)),
    Case("streams a body without end", huge_stream, says=("bytes",)),
    Case("declares a huge body", huge_declared, says=("bytes",)),
    Case("sends a gzip bomb", gzip_bomb, says=("bytes",)),
    Case("nests JSON 500 deep", deep_json, says=("nested too deeply",)),
    Case("answers well over TLS", answer_well, status=200, transport="https"),
    Case("drips its headers over TLS", drip_headers, says=("no usable answer",), transport="https"),
    Case("drips its body over TLS", drip_body, says=("no usable answer",), transport="https"),
    Case("drips the TLS handshake", drip_handshake, says=("no usable answer",), transport="https-raw"),
]


def record() -> Patient:
    """A patient with a back spasm and cyclobenzaprine ordered as a Medication reference."""
    patient = Patient(45, patient_id=PATIENT_ID)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    return patient


def request_for(app, reads: str, patient: Patient, server: str | None) -> dict[str, Any]:
    """A hook request that leaves out what ``reads`` says, to be read from ``server`` with the token.

    ``reads``: ``condition`` (everything else prefetched), ``everything`` (nothing prefetched), ``medication``
    (the Medication that the order references is not sent) or ``nothing`` (the whole record prefetched).
    """
    if reads == "everything":
        body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=server)
    else:
        body = hook_body(app, "patient-view", patient, fhir_server=server)
        if reads == "condition":
            body["prefetch"].pop(key_of(app, "Condition"))
        if reads != "medication":
            body["prefetch"][key_of(app, "MedicationRequest")]["entry"] += [
                {"resource": r, "search": {"mode": "include"}} for r in patient.resources if r["resourceType"] == "Medication"]
    if server:
        body["fhirAuthorization"] = dict(AUTHORIZATION)
    return body


def key_of(app, rtype: str) -> str:
    return next(k for k, t in templates(app, PATIENT_VIEW).items() if resource_type_of(t) == rtype)


@dataclass
class Outcome:
    """What a hook call against a case's server gave, and what its server and the other origin received."""

    answer: Any
    seconds: float
    server: LoopbackServer
    other: LoopbackServer


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def app(tmp_path_factory, certificate):
    """The service, trusting the test certificate (and no CA bundle named by the environment) for its FHIR requests."""
    app = make_app(tmp_path_factory.mktemp("hostile"), request_budget=BUDGET)
    session = state_of(app).http
    session.trust_env = False
    session.verify = str(certificate[0])
    return app


def server_for(case: Case, context: dict[str, Any], certificate: tuple[Path, Path]) -> LoopbackServer:
    if case.transport == "http":
        return LoopbackServer(case.behaviour, context)
    if case.transport == "https-raw":
        return LoopbackServer(case.behaviour, context, scheme="https", reads_request=False)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*certificate)
    return LoopbackServer(case.behaviour, context, scheme="https", tls=tls)


@pytest.fixture(scope="module")
def patient() -> Patient:
    return record()


@dataclass
class Run:
    """Every case's outcome by name, and the threads the calls left alive."""

    outcomes: dict[str, Outcome]
    threads_left: list[str]


@pytest.fixture(scope="module")
def run(app, patient, certificate) -> Iterator[Run]:
    """Every case called at once, each against its own server and other origin; all of them stop at the end.

    A call still unanswered well past the budget has its server stopped, so that a service that waits on a
    server fails the tests instead of hanging them.
    """
    before = set(threading.enumerate())
    others = {case.name: LoopbackServer(answer_other_origin, {}) for case in CASES}
    servers = {case.name: server_for(case, {"other": others[case.name].url, "patient": patient}, certificate) for case in CASES}

    def call_case(case: Case) -> Outcome:
        server = servers[case.name]
        body = request_for(app, case.reads, patient, server.url)
        started = time.monotonic()
        answer = call(app.test_client(), "patient-view", body)
        return Outcome(answer, time.monotonic() - started, server, others[case.name])

    try:
        with ThreadPoolExecutor(max_workers=len(CASES)) as callers:
            futures = {case.name: callers.submit(call_case, case) for case in CASES}
            wait(futures.values(), timeout=BUDGET + MARGIN + 3)
            for name, future in futures.items():
                if not future.done():
                    servers[name].stop()
        outcomes = {name: future.result() for name, future in futures.items()}
        yield Run(outcomes, _threads_left(before, [*servers.values(), *others.values()]))
    finally:
        for server in [*servers.values(), *others.values()]:
            server.stop()
        for server in [*servers.values(), *others.values()]:
            server.join()


def _threads_left(before: set[threading.Thread], servers: list[LoopbackServer], grace: float = 1.0) -> list[str]:
    """Threads started by the calls (not by the servers) still alive ``grace`` seconds after the last answer."""
    deadline = time.monotonic() + grace
    while True:
        theirs = {t for s in servers for t in s.threads()}
        left = [t.name for t in threading.enumerate() if t not in before and t not in theirs and t.is_alive()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_call_is_answered_within_the_budget(run, case):
    result = run.outcomes[case.name]
    assert result.answer.status_code < 500, (result.answer.status_code, result.answer.get_data(as_text=True)[:500])
    assert result.seconds < BUDGET + MARGIN, f"answered after {result.seconds:.2f} s with a {BUDGET} s budget"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_answer_is_a_412_naming_what_could_not_be_read_or_the_cards(app, run, patient, case):
    answer = run.outcomes[case.name].answer
    assert answer.status_code == case.status, (answer.status_code, answer.get_data(as_text=True)[:1000])
    if case.status == 200:
        expected = cards_of(app.test_client(), "patient-view", request_for(app, "nothing", patient, None))
        assert without_uuids(answer.get_json()["cards"]) == without_uuids(expected), "the same cards as the data prefetched"
        return
    text = outcome_diagnostics(answer)
    named = {"condition": ["condition"], "medication": ["Medication/"], "everything": list(templates(app, PATIENT_VIEW))}[case.reads]
    for name in [*named, *case.says]:
        assert name in text, (name, text)
    assert TOKEN not in answer.get_data(as_text=True) and PATIENT_ID not in answer.get_data(as_text=True)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_token_goes_to_the_fhir_server_only(run, case):
    result = run.outcomes[case.name]
    assert result.other.connections == 0, f"another origin was contacted: {[r.path for r in result.other.received]}"
    if case.behaviour is not None and case.transport != "https-raw":
        assert result.server.received, "the case's server was asked"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in result.server.received)


def test_no_thread_is_left_blocked_on_a_server(run):
    """Once every call is answered, nothing the service started still waits on a server that never ends."""
    assert run.threads_left == []


def test_http_client_libraries_never_log_the_url_with_the_patient_id(tmp_path):
    """urllib3 quotes the request URL (``patient=<id>``) when a server sends malformed headers; nothing of it is logged."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = logging.getLogger()
    handler, level = Keep(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        app = make_app(tmp_path, request_budget=1.5)
        server = LoopbackServer(lambda x: x.conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n: no name\r\nCo\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"), {})
        patient = record()
        try:
            call(app.test_client(), "patient-view", request_for(app, "condition", patient, server.url))
        finally:
            server.stop()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert not [m for m in seen if patient.id in m or "patient=" in m]
