"""What only the real HTTP server shows: its own error answers are JSON, kept-alive connections survive every error.

The service runs under gunicorn as ``back-spasm-cds serve`` does; requests are written on raw sockets, so they
can be anything a scanner or a broken client sends. Every answer is checked the same way: a status below 500, a
JSON OperationOutcome body, and either ``Connection: close`` or a connection that still answers the next request.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.live_server import LiveServer

SERVICE = "/cds-services/back-spasm-treatment-pathway-patient-view"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("http") / "cds.sqlite", env={"BACK_SPASM_CDS_MAX_BODY_BYTES": str(LIMIT),
                                                                         "BACK_SPASM_CDS_WORKERS": "1"}) as live:
        yield live


def read_answer(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes] | None:
    """One final HTTP answer (status, lower-cased headers, body) after any ``100 Continue``; None if the connection
    closed first."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    status = int(lines[0].split()[1])
    if status == 100:
        return read_answer(sock, body)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def chunked(data: bytes, size: int = 8192) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def post(path: str, body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(), extra, len(body), body)


def post_chunked(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%s" % (
        path.encode(), chunked(body))


BIG = b'{"padding": "' + b"x" * (LIMIT * 3) + b'"}'
NEAR = b'{"padding": "' + b"x" * (LIMIT - 100) + b'"}'
SMALL = b'{"hook": "patient-view"}'

#: Raw requests and the status each must get.
CASES = {
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "header too large": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "too many headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n", 431),
    "not a request line": (b"GARBAGE\r\n\r\n", 400),
    "a method with odd characters": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "an unknown HTTP version": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    "a path that is not UTF-8": (b"GET /fhir/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a Content-Length that is not a number": (b"POST " + SERVICE.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" + SMALL, 400),
    "both Content-Length and chunked": (b"POST " + SERVICE.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(SMALL), 400),
    "a malformed chunk": (b"POST " + SERVICE.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "a body over the limit": (post(SERVICE, BIG), 413),
    "a chunked body over the limit": (post_chunked(SERVICE, BIG), 413),
    "a chunked body that is not a hook request": (post_chunked(SERVICE, SMALL), 400),
    "a large body to an unknown service": (post("/cds-services/nope", NEAR), 404),
    "a large body to discovery": (post("/cds-services", NEAR), 405),
    "a large body with a bad token": (post(SERVICE, NEAR, b"Authorization: Bearer not.a.jwt"), 401),
    "a large body of bad feedback": (post(SERVICE + "/feedback", NEAR), 400),
    "a large body to a /fhir operation": (post("/fhir/PlanDefinition/back-spasm-treatment-pathway/$apply", NEAR), 400),
    "Expect: 100-continue": (post(SERVICE, SMALL, b"Expect: 100-continue"), 400),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_error_is_json_and_the_connection_is_closed_or_still_answers(server, case):
    raw, status = CASES[case]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before a body over the limit is all sent
        answer = read_answer(sock)
        assert answer is not None, "the connection closed without an answer"
        code, headers, body = answer
        assert code == status, body[:300]
        assert headers["content-type"].split(";")[0] in ("application/json", "application/fhir+json")
        outcome = json.loads(body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
        if headers.get("connection", "").lower() == "close":
            return
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        following = read_answer(sock)
        assert following is not None and following[0] == 200, "a kept-alive connection must answer the next request"


def test_a_chunked_hook_request_within_the_limit_is_answered_like_any_other(server):
    from tests.patients import Patient
    from tests.service_helpers import hook_body, make_app, without_uuids

    p = Patient(45)
    p.spasm(20)
    body = json.dumps(hook_body(make_app(server.database.parent / "t"), "patient-view", p)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_chunked(SERVICE, body))
        chunked_answer = read_answer(sock)
        sock.sendall(post(SERVICE, body))
        plain_answer = read_answer(sock)
    assert chunked_answer[0] == plain_answer[0] == 200
    cards = [without_uuids(json.loads(answer[2])["cards"]) for answer in (chunked_answer, plain_answer)]
    assert cards[0] == cards[1] and cards[0]


def test_slow_clients_do_not_stop_the_service_and_are_cut_off(server):
    """64 connections sending their request head a line every 2 s (no token needed to hold one): /healthz is still
    answered at once on a new connection, and the service closes each slow connection itself (the head must arrive
    within the keep-alive time)."""
    import threading
    import time
    import urllib.request

    stop = threading.Event()
    closed: list[float] = []

    def slow() -> None:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
                line = 0
                while not stop.wait(2.0):
                    sock.sendall(b"X-Slow-%d: x\r\n" % line)
                    line += 1
                    try:
                        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                            break  # the service closed the connection
                    except BlockingIOError:
                        continue  # still open, nothing to read
        except OSError:
            pass  # reset by the service
        closed.append(time.monotonic() - started)

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(64)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        for _ in range(5):
            started = time.monotonic()
            with urllib.request.urlopen(f"{server.base}/healthz", timeout=2) as answer:
                assert answer.status == 200
            assert time.monotonic() - started < 1.0
            time.sleep(0.5)
        for thread in threads:
            thread.join(15)
    finally:
        stop.set()
    assert len(closed) == 64 and max(closed) < 12, "every slow connection was closed by the service"
