"""Fuzzing every endpoint with mutations of valid requests: never a 5xx, a JSON body on every error, no harm done.

Each example takes a valid request of one endpoint (the three hook services, feedback, the /fhir operations and
searches, discovery) and mutates it: values replaced by hostile ones (wrong JSON types, numbers past 64 bits,
template tokens, odd dates and references, deep nesting), keys dropped, objects wrapped in lists; some carry a
signed JWT whose claims were mutated the same way. Every answer must be below 500, and every error a JSON
OperationOutcome. After the run a valid request must still get exactly the cards it got before.

The examples are derandomized (a fixed seed). ``FUZZ_EXAMPLES`` sets how many (default 300; run 10,000 or more
locally). ``FUZZ_LIVE=1`` sends them over HTTP to the service under gunicorn (in production mode) instead of the
in-process client, and also counts dropped connections and answers slower than 10 s (there must be none):

    FUZZ_EXAMPLES=10000 FUZZ_LIVE=1 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import time
import uuid
from collections import Counter
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.live_server import LiveServer
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, PHENELZINE, Patient
from tests.service_helpers import SERVICES, hook_body, make_app, without_uuids

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
LIVE = os.environ.get("FUZZ_LIVE", "") not in ("", "0")
ISSUER = "https://ehr.fuzz.example.org"
KID = "fuzz-1"
PATHWAY = "back-spasm-treatment-pathway"
HOSTILE_STRINGS = ["", " ", "{{context.patientId}}", "{{context.patientId", "{{x", "}}", "Patient/other", "Patient/", "../../etc/passwd",
                   "urn:uuid:0", "2026-02-30", "2026-13-45T25:61:00Z", "9999-12-31", "0000-01-01", "T", "NaN", "Infinity", "null",
                   "http://", "http://[::1", "https://evil.example.org/fhir", "x" * 5000, "\u0000", "\ud7ff\ue000", "Bearer x", "a|b|c",
                   "active", "final", "entered-in-error", "mg", "{}", "[]", "patient-view", "order-sign"]


def _hostile_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                     st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE_STRINGS), st.text(max_size=12))


HOSTILE = st.recursive(_hostile_leaf(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["resourceType", "id", "reference", "code", "system", "value", "entry", "resource", "coding", "x"]), inner, max_size=3),
    max_leaves=8)
#: How often each kind of token is drawn; the live service is in production mode, where only a valid token gets past.
TOKEN_KINDS = ["none", "valid", "valid", "valid", "valid", "valid", "claims", "claims", "header", "garbage"] if LIVE else \
    ["none", "none", "none", "valid", "valid", "valid", "claims", "claims", "header", "garbage"]
OPERATIONS = ["replace", "replace", "replace", "drop", "wrap", "unwrap", "deep", "duplicate"]


# -- mutating JSON --------------------------------------------------------------------------------------------------

def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document (the root excluded)."""
    found = []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in children:
        found.append((*path, key))
        if len(found) < 4000 and len(path) < 60:
            found.extend(_paths(item, (*path, key)))
    return found


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate(doc: Any, draw: Any, rounds: int) -> Any:
    """The document with ``rounds`` mutations drawn by hypothesis (``draw`` is ``data.draw``)."""
    doc = copy.deepcopy(doc)
    for _ in range(rounds):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key, operation = _parent(doc, path), path[-1], draw(st.sampled_from(OPERATIONS))
        if operation == "replace":
            parent[key] = draw(HOSTILE)
        elif operation == "drop":
            del parent[key]
        elif operation == "wrap":
            parent[key] = [parent[key]]
        elif operation == "unwrap" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key][0]
        elif operation == "deep":
            nested: Any = parent[key]
            for _ in range(draw(st.sampled_from([40, 98, 101, 150]))):
                nested = [nested]
            parent[key] = nested
        elif operation == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


# -- the endpoints and their valid requests ---------------------------------------------------------------------


def _patient() -> Patient:
    p = Patient(45)
    p.spasm(20)
    p.medication(PHENELZINE, kind="statement", status="active")
    p.physical_therapy()
    return p


def seeds(app: Any) -> dict[str, tuple[str, str, Any]]:
    """Valid requests by name: (method, path, JSON body or query string)."""
    p = _patient()
    draft = p.draft_medication(CYCLOBENZAPRINE_10)
    out: dict[str, tuple[str, str, Any]] = {}
    for hook, service in SERVICES.items():
        out[hook] = ("POST", f"/cds-services/{service}", hook_body(app, hook, p, [] if hook == "patient-view" else [draft]))
    out["feedback"] = ("POST", f"/cds-services/{SERVICES['patient-view']}/feedback", {"feedback": [
        {"card": str(uuid.uuid4()), "outcome": "accepted", "acceptedSuggestions": [{"id": str(uuid.uuid4())}], "outcomeTimestamp": "2026-11-25T10:00:00Z"},
        {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z",
         "overrideReason": {"reason": {"system": "http://example.org/reasons", "code": "patient-declined", "display": "Declined"},
                            "userComment": "prefers heat"}}]})
    record = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in p.resources]}
    apply = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{p.id}"}, {"name": "data", "resource": record},
        {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [{"name": "draftOrders", "resource": draft}]}}]}
    out["$apply"] = ("POST", f"/fhir/PlanDefinition/{PATHWAY}/$apply", apply)
    out["$r5.apply"] = ("POST", "/fhir/PlanDefinition/back-spasm-order-review/$r5.apply", apply)
    out["$apply by url"] = ("POST", "/fhir/PlanDefinition/$apply", {
        "resourceType": "Parameters", "parameter": [{"name": "url", "valueUri": "http://example.org/fhir/back-spasm-cds/PlanDefinition/back-spasm-treatment-pathway"},
                                                    *apply["parameter"]]})
    out["ActivityDefinition/$apply"] = ("POST", "/fhir/ActivityDefinition/cyclobenzaprine-5mg-tid/$apply", apply)
    out["$expand"] = ("POST", "/fhir/ValueSet/back-muscle-spasm/$expand", {"resourceType": "Parameters", "parameter": [
        {"name": "filter", "valueString": "spasm"}, {"name": "offset", "valueInteger": 0}, {"name": "count", "valueInteger": 5}]})
    out["search"] = ("GET", "/fhir/PlanDefinition", {"_id": PATHWAY, "status": "active", "_count": "10"})
    out["expand by GET"] = ("GET", "/fhir/ValueSet/back-muscle-spasm/$expand", {"filter": "spasm", "count": "3", "offset": "1"})
    out["discovery"] = ("GET", "/cds-services", {})
    return out


# -- signed tokens with mutated claims ---------------------------------------------------------------------------


def _b64(value: Any) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")


def signed(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWS built by hand, so that claims and header fields of any JSON type can be signed."""
    signing_input = _b64(header) + b"." + _b64(claims)
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input, key)
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def token_for(key: Any, audience: str, draw: Any) -> str | None:
    """No token, a valid one, or one whose header or claims were mutated."""
    kind = draw(st.sampled_from(TOKEN_KINDS))
    if kind == "none":
        return None
    if kind == "garbage":
        return draw(st.sampled_from(["Bearer", "Bearer ", "Basic x", "Bearer a.b.c", "Bearer ..", "bearer " + "A" * 300, "Bearer \u00ff"]))
    now = int(time.time() if LIVE else CLOCK.timestamp())  # the live service runs on the wall clock
    header = {"alg": "ES256", "typ": "JWT", "kid": KID}
    claims = {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    if kind == "claims":
        claims = mutate(claims, draw, draw(st.integers(1, 2)))
    elif kind == "header":
        header = mutate(header, draw, 1)
    return "Bearer " + signed(key, header, claims)


# -- transports ------------------------------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, content_type: str, body: bytes):
        self.status, self.content_type, self.body = status, content_type, body


class InProcess:
    """Requests through Flask's test client."""

    def __init__(self, app: Any):
        self.client = app.test_client()

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str], query: dict[str, Any] | None = None) -> Answer:
        answer = self.client.open(path, method=method, data=body, headers=headers, query_string=query)
        return Answer(answer.status_code, answer.mimetype, answer.get_data())


class OverHttp:
    """Requests over one kept-alive HTTP/1.1 connection to the live service; counts drops and hangs."""

    def __init__(self, port: int):
        self.port = port
        self.connection: http.client.HTTPConnection | None = None
        self.problems: Counter[str] = Counter()

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str], query: dict[str, Any] | None = None) -> Answer:
        from urllib.parse import urlencode

        if query:
            path += "?" + urlencode(query, doseq=True)
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            data = response.read()
        except TimeoutError:
            self.problems["hang"] += 1
            self._reset()
            raise AssertionError(f"no answer within 10 s to {method} {path[:80]}") from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine):
            self.problems["dropped"] += 1
            self._reset()
            raise AssertionError(f"the kept-alive connection was dropped without an answer to {method} {path[:80]}") from None
        if response.getheader("Connection", "").lower() == "close":
            self._reset()
        return Answer(response.status, (response.getheader("Content-Type") or "").split(";")[0], data)

    def _reset(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None


# -- the run ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def target(tmp_path_factory, key):
    """The app (for the seeds) and the transport the requests go through."""
    folder = tmp_path_factory.mktemp("fuzz")
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    clients = folder / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": ISSUER, "jwks": {"keys": [{**public, "kid": KID, "alg": "ES256"}]}}]}))
    app = make_app(folder, trusted_clients=str(clients), max_body_bytes=512 * 1024)
    if not LIVE:
        yield app, InProcess(app), "http://localhost"
        return
    live = LiveServer(folder / "live.sqlite")
    live.env.update({"BACK_SPASM_CDS_MODE": "production", "BACK_SPASM_CDS_TRUSTED_CLIENTS": str(clients),
                     "BACK_SPASM_CDS_PUBLIC_BASE_URL": live.base, "BACK_SPASM_CDS_MAX_BODY_BYTES": str(512 * 1024)})
    with live:
        yield app, OverHttp(live.port), live.base


def valid_cards(target: Any, key: Any, name: str) -> list[dict[str, Any]]:
    """The cards of the valid request of a hook, sent with a valid token."""
    app, transport, base = target
    method, path, body = seeds_cache(app)[name]
    headers = {"Content-Type": "application/json", "Authorization": token_for(key, base + path, lambda _: "valid")}
    answer = transport.send(method, path, json.dumps(body).encode(), headers)
    assert answer.status == 200, answer.body[:500]
    return without_uuids(json.loads(answer.body)["cards"])


@pytest.fixture(scope="module")
def baseline(target, key):
    """The cards a valid request gets before any fuzzing."""
    return {name: valid_cards(target, key, name) for name in SERVICES}


STATUSES: Counter[int] = Counter()


def check(answer: Answer, what: str) -> None:
    STATUSES[answer.status] += 1
    assert answer.status < 500, f"{what}: {answer.status} {answer.body[:400]!r}"
    if answer.status >= 400:
        assert answer.content_type in ("application/json", "application/fhir+json"), f"{what}: {answer.status} as {answer.content_type}"
        outcome = json.loads(answer.body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"], what


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_requests_never_get_a_server_error(target, baseline, key, data):
    app, transport, base = target
    name = data.draw(st.sampled_from(sorted(seeds_cache(app))), label="endpoint")
    method, path, body = seeds_cache(app)[name]
    headers = {"Content-Type": "application/json"}
    authorization = token_for(key, base + path, data.draw)
    if authorization is not None:
        headers["Authorization"] = authorization
    mutated = mutate(body, data.draw, data.draw(st.integers(0, 3), label="mutations")) if body else body
    if method == "GET":
        query = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (mutated.items() if isinstance(mutated, dict) else [])}
        check(transport.send("GET", path, None, headers, query), f"GET {name}")
        return
    raw = json.dumps(mutated).encode()
    if data.draw(st.integers(0, 3)) == 0:
        raw = _raw_mutation(raw, data.draw)
    check(transport.send(method, path, raw, headers), f"{method} {name}")


def _raw_mutation(raw: bytes, draw: Any) -> bytes:
    """The serialised body with a byte-level change: cut short, a NaN or a long integer spliced in, bytes flipped."""
    at = draw(st.integers(0, max(0, len(raw) - 1)))
    kind = draw(st.sampled_from(["cut", "nan", "long integer", "deep", "flip", "as is"]))
    if kind == "cut":
        return raw[:at]
    if kind == "nan":
        return raw.replace(b":", b": NaN, \"_\":", 1)
    if kind == "deep":
        return raw.replace(b":", b": " + b"[" * 3000 + b"]" * 3000 + b", \"_\":", 1)
    if kind == "long integer":
        return raw.replace(b":", b": 123456789012345678901234567890, \"_\":", 1)
    if kind == "flip":
        return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]
    return raw


_SEEDS: dict[int, dict[str, tuple[str, str, Any]]] = {}


def seeds_cache(app: Any) -> dict[str, tuple[str, str, Any]]:
    if id(app) not in _SEEDS:
        _SEEDS[id(app)] = seeds(app)
    return _SEEDS[id(app)]


def _timeless(cards: Any) -> list[str]:
    """Cards as lines of JSON, the instants the live service stamps from its own clock (authoredOn) blanked."""
    text = json.dumps(cards, indent=1, sort_keys=True)
    return re.sub(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"', '"<now>"', text).splitlines()


def test_after_the_fuzzing_a_valid_request_gets_the_same_cards(target, baseline, key):
    """Runs after the fuzz test (file order): nothing the hostile requests did changed the answers."""
    transport = target[1]
    for name in SERVICES:
        assert _timeless(valid_cards(target, key, name)) == _timeless(baseline[name])
    print(f"\nfuzz: {sum(STATUSES.values())} requests, by status {dict(sorted(STATUSES.items()))}"
          + (f", dropped or hung: {dict(transport.problems)}" if isinstance(transport, OverHttp) else ""))
    if isinstance(transport, OverHttp):
        assert not transport.problems, dict(transport.problems)
