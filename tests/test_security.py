"""Client authentication, FHIR-server trust and safe logs: every bad token is refused before any work is done."""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol.engine.apply import Engine
from protocol.engine.content import load_content
from service import create_app
from service.config import Settings
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, PHENELZINE, Patient

BASE = "https://cds.example.org"
ISSUER = "https://ehr.example.org"
SERVICE = "back-spasm-treatment-pathway-patient-view"
SANDBOX = Path(__file__).resolve().parent / "data" / "sandbox-requests"


@pytest.fixture(scope="module")
def engine():
    return Engine(load_content())


def _jwk(private, kid, alg):
    public = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True) if alg.startswith("ES") \
        else jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys():
    return {"ec": ec.generate_private_key(ec.SECP384R1()), "other": ec.generate_private_key(ec.SECP384R1()),
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture(scope="module")
def jwks(keys):
    return {"keys": [_jwk(keys["ec"], "ec-1", "ES384"), _jwk(keys["rsa"], "rsa-1", "RS384")]}


@pytest.fixture
def clients_file(tmp_path, jwks, httpserver):
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISSUER, "jwks": jwks, "jku": [f"{BASE}/jwks.json"],
                                             "fhir_servers": [httpserver.url_for("/fhir")]}]}))
    return path


class Recorder:
    """Counts calls into the engine, to prove a refused request never reached it."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def apply(self, *args, **kwargs):
        self.calls += 1
        return self.engine.apply(*args, **kwargs)


def make_app(engine, tmp_path, clients_file=None, mode="production", clock=lambda: CLOCK, **overrides):
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite"), "mode": mode, "public_base_url": BASE,
                                                   "trusted_clients": str(clients_file) if clients_file else None, **overrides})
    recorder = Recorder(engine)
    app = create_app(settings, engine=recorder, clock=clock)
    return app, recorder


def token(keys, *, aud=f"{BASE}/cds-services/{SERVICE}", key="ec", kid="ec-1", alg="ES384", header=None, now=CLOCK, **claims):
    body = {"iss": ISSUER, "aud": aud, "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 300, "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, keys[key], algorithm=alg, headers={"kid": kid, "typ": "JWT", **(header or {})})


def hook_body(patient, server=None, token_value=None):
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": {"patientId": patient.id, "userId": "Practitioner/1"},
            "prefetch": {"patient": patient.patient,
                         "condition": {"resourceType": "Bundle", "type": "searchset",
                                       "entry": [{"resource": r} for r in patient.resources if r["resourceType"] == "Condition"]}}}
    if server:
        body["fhirServer"] = server
        if token_value:
            body["fhirAuthorization"] = {"access_token": token_value, "token_type": "Bearer", "expires_in": 60, "scope": "patient/*.read",
                                         "subject": "cds"}
    return body


@pytest.fixture
def patient():
    p = Patient(45)
    p.spasm(20)
    return p


def _post(app, body, auth):
    headers = {"Authorization": auth} if auth is not None else {}
    return app.test_client().post(f"/cds-services/{SERVICE}", json=body, headers=headers)


def _complete(body, app):
    """Every prefetch key answered (null where the test has no data), so no FHIR server is needed."""
    services = app.extensions["back_spasm_cds"].services
    for key in services[SERVICE].prefetch:
        body["prefetch"].setdefault(key, None)
    return body


# -- the refusals -----------------------------------------------------------------------------------------------

def _hs256_with_public_key(keys):
    pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()).rstrip(b"=")
    claims = {"iss": ISSUER, "aud": f"{BASE}/cds-services/{SERVICE}", "iat": int(CLOCK.timestamp()), "exp": int(CLOCK.timestamp()) + 300,
              "jti": str(uuid.uuid4())}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac
    signature = base64.urlsafe_b64encode(hmac.new(pem, head + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    return (head + b"." + payload + b"." + signature).decode()


def _alg_none():
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec-1"}).encode()).rstrip(b"=")
    claims = {"iss": ISSUER, "aud": f"{BASE}/cds-services/{SERVICE}", "iat": int(CLOCK.timestamp()), "exp": int(CLOCK.timestamp()) + 300,
              "jti": str(uuid.uuid4())}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return (head + b"." + payload + b".").decode()


BAD_TOKENS = {
    "missing header": lambda k: None,
    "not bearer": lambda k: "Basic dXNlcjpwYXNz",
    "malformed": lambda k: "Bearer not.a.jwt",
    "alg none": lambda k: "Bearer " + _alg_none(),
    "HS256 signed with the public key": lambda k: "Bearer " + _hs256_with_public_key(k),
    "unknown kid": lambda k: "Bearer " + token(k, kid="nope"),
    "wrong key": lambda k: "Bearer " + token(k, key="other"),
    "expired": lambda k: "Bearer " + token(k, iat=int(CLOCK.timestamp()) - 900, exp=int(CLOCK.timestamp()) - 600),
    "iat in the future": lambda k: "Bearer " + token(k, iat=int(CLOCK.timestamp()) + 600, exp=int(CLOCK.timestamp()) + 900),
    "aud of another service": lambda k: "Bearer " + token(k, aud=f"{BASE}/cds-services/back-spasm-order-review-order-sign"),
    "aud of discovery": lambda k: "Bearer " + token(k, aud=f"{BASE}/cds-services"),
    "aud on another host": lambda k: "Bearer " + token(k, aud=f"https://evil.example.org/cds-services/{SERVICE}"),
    "missing jti": lambda k: "Bearer " + token(k, jti=None),
    "missing exp": lambda k: "Bearer " + token(k, exp=None),
    "jku not allowed": lambda k: "Bearer " + token(k, header={"jku": "https://evil.example.org/jwks.json"}),
    "issuer not configured": lambda k: "Bearer " + token(k, iss="https://unknown.example.org"),
    "lifetime over an hour": lambda k: "Bearer " + token(k, exp=int(CLOCK.timestamp()) + 7200),
}
_NOW = int(CLOCK.timestamp())
#: Claims and header fields of the wrong JSON type: each is refused with a plain 401, never an error.
BAD_CLAIM_TYPES = {
    "exp a string": {"exp": str(_NOW + 300)},
    "exp a fraction in a string": {"exp": f"{_NOW + 300}.5"},
    "exp NaN": {"exp": float("nan")},
    "exp infinite": {"exp": float("inf")},
    "exp true": {"exp": True},
    "exp beyond 64 bits": {"exp": 2 ** 70},
    "exp an object": {"exp": {"at": _NOW + 300}},
    "iat a string": {"iat": str(_NOW)},
    "iat a list": {"iat": [_NOW]},
    "nbf a string": {"nbf": str(_NOW)},
    "nbf null": {"nbf": "null"},
    "iss a list": {"iss": [ISSUER]},
    "iss an object": {"iss": {"url": ISSUER}},
    "aud a number": {"aud": 42},
    "aud a list of objects": {"aud": [{"url": f"{BASE}/cds-services/{SERVICE}"}]},
    "aud with a bad port": {"aud": "https://cds.example.org:99999/x"},
    "jti an object": {"jti": {"id": "1"}},
    "jti a number": {"jti": 7},
    "jti empty": {"jti": ""},
}
BAD_HEADER_TYPES = {"kid a list": {"kid": ["ec-1"]}, "kid a number": {"kid": 1}, "jku a list": {"jku": [f"{BASE}/jwks.json"]},
                    "typ a list": {"typ": ["JWT"]}}


def _b64(value) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")


def _signed(keys, header, claims):
    """A JWS signed with the trusted EC key, built by hand: PyJWT refuses to write claims of the wrong type."""
    signing_input = _b64({"alg": "ES384", "typ": "JWT", "kid": "ec-1", **header}) + b"." + _b64(claims)
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA384).sign(signing_input, keys["ec"])
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def _claims_token(keys, case):
    claims = {"iss": ISSUER, "aud": f"{BASE}/cds-services/{SERVICE}", "iat": _NOW, "exp": _NOW + 300, "jti": str(uuid.uuid4())}
    if case in BAD_CLAIM_TYPES:
        claims.update({k: None if v == "null" else v for k, v in BAD_CLAIM_TYPES[case].items()})
        return _signed(keys, {}, claims)
    return _signed(keys, BAD_HEADER_TYPES[case], claims)


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("case", sorted(BAD_CLAIM_TYPES) + sorted(BAD_HEADER_TYPES))
def test_a_claim_of_the_wrong_type_is_a_401_not_an_error(engine, tmp_path, clients_file, keys, patient, case):
    app, recorder = make_app(engine, tmp_path, clients_file)
    seen = _Messages()
    logging.getLogger("back_spasm_cds.auth").addHandler(seen)
    signed = _claims_token(keys, case)
    answer = _post(app, _complete(hook_body(patient), app), "Bearer " + signed)
    assert answer.status_code == 401, answer.json
    assert answer.json["issue"][0]["diagnostics"] == "authentication failed: a valid CDS Hooks JWT bearer token is required"
    assert recorder.calls == 0
    logging.getLogger("back_spasm_cds.auth").removeHandler(seen)
    refusals = seen.messages
    assert refusals and all(signed not in m for m in refusals)
    claim = case.split()[0]
    if claim in ("exp", "iat", "nbf", "iss", "jti"):
        assert any(claim in m.lower() for m in refusals), refusals


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_bad_token_is_refused_before_any_work(engine, tmp_path, clients_file, keys, patient, httpserver, case, caplog):
    app, recorder = make_app(engine, tmp_path, clients_file)
    body = hook_body(patient, server=httpserver.url_for("/fhir"), token_value="ehr-access-token")
    caplog.set_level(logging.WARNING, logger="back_spasm_cds")
    answer = _post(app, body, BAD_TOKENS[case](keys))
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.json["issue"][0]["diagnostics"] == "authentication failed: a valid CDS Hooks JWT bearer token is required"
    assert recorder.calls == 0
    assert httpserver.log == []


def test_the_same_token_twice_is_a_replay(engine, tmp_path, clients_file, keys, patient):
    app, recorder = make_app(engine, tmp_path, clients_file)
    auth = "Bearer " + token(keys)
    first = _post(app, _complete(hook_body(patient), app), auth)
    assert first.status_code == 200
    again = _post(app, _complete(hook_body(patient), app), auth)
    assert again.status_code == 401
    assert recorder.calls == 1


def test_a_good_token_is_accepted_on_each_endpoint_with_its_own_aud(engine, tmp_path, clients_file, keys, patient):
    app, _ = make_app(engine, tmp_path, clients_file)
    client = app.test_client()
    assert client.get("/cds-services", headers={"Authorization": "Bearer " + token(keys, aud=f"{BASE}/cds-services")}).status_code == 200
    assert client.get("/cds-services", headers={"Authorization": "Bearer " + token(keys, aud=f"{BASE}/cds-services/")}).status_code == 200
    answer = _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, key="rsa", kid="rsa-1", alg="RS384"))
    assert answer.status_code == 200 and answer.json["cards"]
    feedback = {"feedback": [{"card": answer.json["cards"][0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}]}
    aud = f"{BASE}/cds-services/{SERVICE}/feedback"
    assert client.post(f"/cds-services/{SERVICE}/feedback", json=feedback, headers={"Authorization": "Bearer " + token(keys, aud=aud)}).status_code == 200
    assert client.get("/cds-services", headers={"Authorization": "Bearer " + token(keys, aud=aud)}).status_code == 401


def test_production_refuses_calls_without_a_token_and_the_sandbox_issuer(engine, tmp_path, clients_file):
    app, recorder = make_app(engine, tmp_path, clients_file)
    capture = json.loads((SANDBOX / "discovery-get.json").read_text())
    assert app.test_client().get("/cds-services").status_code == 401
    answer = app.test_client().get("/cds-services", headers={"Authorization": capture["headers"]["Authorization"]})
    assert answer.status_code == 401


def test_captured_sandbox_tokens_are_accepted_in_development_mode(engine, tmp_path):
    """The sandbox signs with a public key: trusted in development only, checked like any other token."""
    for name in ("discovery-get.json", "feedback-accepted-patient-view.json"):
        capture = json.loads((SANDBOX / name).read_text())
        issued = datetime.fromtimestamp(capture["jwt_claims"]["iat"], timezone.utc)
        base = capture["jwt_claims"]["aud"].split("/cds-services")[0]
        settings = Settings.load(environ={}, overrides={"database": str(tmp_path / f"{name}.sqlite"), "mode": "development",
                                                        "public_base_url": base, "allow_unauthenticated": False})
        app = create_app(settings, engine=engine, clock=lambda issued=issued: issued)
        client = app.test_client()
        headers = {"Authorization": capture["headers"]["Authorization"]}
        if capture["method"] == "GET":
            assert client.get(capture["path"], headers=headers).status_code == 200
        else:
            # the captured feedback went to a service of another name: authentication passes, the service is unknown
            answer = client.post(capture["path"], json=capture["body"], headers=headers)
            assert answer.status_code == 404


def test_sandbox_token_expires_like_any_other(engine, tmp_path):
    capture = json.loads((SANDBOX / "discovery-get.json").read_text())
    issued = datetime.fromtimestamp(capture["jwt_claims"]["iat"], timezone.utc)
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "c.sqlite"), "mode": "development", "allow_unauthenticated": False,
                                                    "public_base_url": capture["jwt_claims"]["aud"].split("/cds-services")[0]})
    app = create_app(settings, engine=engine, clock=lambda: issued + timedelta(hours=2))
    assert app.test_client().get("/cds-services", headers={"Authorization": capture["headers"]["Authorization"]}).status_code == 401


# -- FHIR server trust ---------------------------------------------------------------------------------------

def test_a_fhir_server_outside_the_allow_list_is_never_contacted(engine, tmp_path, clients_file, keys, patient, httpserver):
    from pytest_httpserver import HTTPServer

    stranger = HTTPServer(host="127.0.0.1", port=0)
    stranger.start()
    try:
        app, recorder = make_app(engine, tmp_path, clients_file)
        body = hook_body(patient, server=stranger.url_for("/fhir"), token_value="ehr-access-token")
        answer = _post(app, body, "Bearer " + token(keys))
        assert answer.status_code == 412
        assert stranger.log == [] and httpserver.log == []
        assert recorder.calls == 0
    finally:
        stranger.clear()
        stranger.stop()


def test_the_allowed_fhir_server_gets_the_token_and_only_it(engine, tmp_path, clients_file, keys, patient, httpserver):
    """(Development mode, because the loopback test server speaks plain http, which production refuses.)"""
    app, _ = make_app(engine, tmp_path, clients_file, mode="development", allow_unauthenticated=False)
    body = hook_body(patient, server=httpserver.url_for("/fhir"), token_value="ehr-access-token")
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    for key, template in app.extensions["back_spasm_cds"].services[SERVICE].prefetch.items():
        if key not in body["prefetch"]:
            httpserver.expect_request(f"/fhir/{template.split('?')[0]}", headers={"Authorization": "Bearer ehr-access-token"}).respond_with_json(empty)
    answer = _post(app, body, "Bearer " + token(keys))
    assert answer.status_code == 200
    assert len(httpserver.log) == len(app.extensions["back_spasm_cds"].services[SERVICE].prefetch) - 2


@pytest.mark.parametrize("trick", ["/fhir/../admin", "/fhir/%2e%2e/admin", "/fhir/./../admin/", "/fhir/..%2Fadmin", "/fhirx"])
def test_a_fhir_server_path_cannot_climb_out_of_the_allow_list(engine, tmp_path, clients_file, keys, patient, httpserver, trick):
    """(Development mode with a JWT, as the loopback test server speaks plain http.) The allow-list names .../fhir."""
    app, recorder = make_app(engine, tmp_path, clients_file, mode="development", allow_unauthenticated=False)
    base = httpserver.url_for("")
    body = hook_body(patient, server=base.rstrip("/") + trick, token_value="ehr-access-token")
    answer = _post(app, body, "Bearer " + token(keys))
    assert answer.status_code in (400, 412)
    assert not [r for r in httpserver.log if not r[0].path.startswith("/fhir/")], "nothing outside the allowed base is read"
    assert all(r[0].headers.get("Authorization") is None or r[0].path.startswith("/fhir/") for r in httpserver.log)
    assert recorder.calls == 0


@pytest.mark.parametrize("suffix, problem", [("?x=1", "without a query"), ("#frag", "without a fragment")])
def test_a_fhir_server_with_a_query_or_fragment_is_400(engine, tmp_path, clients_file, keys, patient, httpserver, suffix, problem):
    app, recorder = make_app(engine, tmp_path, clients_file, mode="development", allow_unauthenticated=False)
    body = hook_body(patient, server=httpserver.url_for("/fhir") + suffix, token_value="ehr-access-token")
    answer = _post(app, body, "Bearer " + token(keys))
    assert answer.status_code == 400 and problem in json.dumps(answer.json)
    assert httpserver.log == [] and recorder.calls == 0


def test_a_fhir_server_with_user_information_is_400(engine, tmp_path, clients_file, keys, patient, httpserver):
    app, _ = make_app(engine, tmp_path, clients_file, mode="development", allow_unauthenticated=False)
    server = httpserver.url_for("/fhir").replace("http://", "http://127.0.0.1@")
    answer = _post(app, hook_body(patient, server=server, token_value="ehr-access-token"), "Bearer " + token(keys))
    assert answer.status_code == 400 and "user information" in json.dumps(answer.json)
    assert httpserver.log == []


def test_a_next_link_outside_the_base_path_is_not_followed(engine, tmp_path, clients_file, keys, patient, httpserver):
    app, recorder = make_app(engine, tmp_path, clients_file, mode="development", allow_unauthenticated=False)
    body = hook_body(patient, server=httpserver.url_for("/fhir"), token_value="ehr-access-token")
    outside = {"resourceType": "Bundle", "type": "searchset", "entry": [],
               "link": [{"relation": "next", "url": httpserver.url_for("/admin/export?page=2")}]}
    for key, template in app.extensions["back_spasm_cds"].services[SERVICE].prefetch.items():
        if key not in body["prefetch"]:
            httpserver.expect_request(f"/fhir/{template.split('?')[0]}").respond_with_json(outside)
    httpserver.expect_request("/admin/export").respond_with_json({"resourceType": "Bundle", "type": "searchset"})
    answer = _post(app, body, "Bearer " + token(keys))
    assert answer.status_code == 412 and "outside the FHIR server's base" in json.dumps(answer.json)
    assert not [r for r in httpserver.log if r[0].path.startswith("/admin")]
    assert recorder.calls == 0


def test_production_never_calls_a_plain_http_fhir_server(engine, tmp_path, keys, patient, httpserver):
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISSUER, "jwks": {"keys": [_jwk(keys["ec"], "ec-1", "ES384")]},
                                             "fhir_servers": [httpserver.url_for("/fhir")]}]}))
    app, _ = make_app(engine, tmp_path, path)
    answer = _post(app, hook_body(patient, server=httpserver.url_for("/fhir")), "Bearer " + token(keys))
    assert answer.status_code == 412
    assert httpserver.log == []


# -- keys from jku -----------------------------------------------------------------------------------------

def test_keys_are_fetched_from_an_allowed_jku_and_refreshed_once_for_a_new_kid(engine, tmp_path, keys, patient, httpserver):
    jku = httpserver.url_for("/jwks.json")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISSUER, "jku": [jku]}]}))
    httpserver.expect_ordered_request("/jwks.json").respond_with_json({"keys": [_jwk(keys["ec"], "ec-1", "ES384")]})
    httpserver.expect_ordered_request("/jwks.json").respond_with_json({"keys": [_jwk(keys["ec"], "ec-1", "ES384"),
                                                                                 _jwk(keys["other"], "ec-2", "ES384")]})
    app, _ = make_app(engine, tmp_path, path, mode="development", allow_unauthenticated=False)
    first = _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, header={"jku": jku}))
    assert first.status_code == 200
    app.extensions["back_spasm_cds"].auth.clients[ISSUER].fetched.clear()
    rotated = _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, key="other", kid="ec-2", header={"jku": jku}))
    assert rotated.status_code == 200
    assert len(httpserver.log) == 2


def test_fetched_keys_expire_after_the_ttl_and_a_dropped_key_stops_working(engine, tmp_path, keys, patient, httpserver):
    from service.cds_hooks.auth import JWKS_TTL_SECONDS

    jku = httpserver.url_for("/jwks.json")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISSUER, "jku": [jku]}]}))
    httpserver.expect_ordered_request("/jwks.json").respond_with_json({"keys": [_jwk(keys["ec"], "ec-1", "ES384")]})
    httpserver.expect_ordered_request("/jwks.json").respond_with_json({"keys": [_jwk(keys["other"], "ec-2", "ES384")]})
    app, _ = make_app(engine, tmp_path, path, mode="development", allow_unauthenticated=False)
    auth = app.extensions["back_spasm_cds"].auth
    clock = [1000.0]
    auth.monotonic = lambda: clock[0]
    assert _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, header={"jku": jku})).status_code == 200
    clock[0] += 10
    assert _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, header={"jku": jku})).status_code == 200
    assert len(httpserver.log) == 1, "cached within the TTL"
    clock[0] += JWKS_TTL_SECONDS + 1
    assert _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, header={"jku": jku})).status_code == 401
    assert len(httpserver.log) == 2, "fetched again after the TTL; ec-1 is gone from the new set"


# -- startup guard -----------------------------------------------------------------------------------------

def test_serve_refuses_a_public_address_without_trusted_clients(capsys, monkeypatch):
    from service.cli import main

    monkeypatch.delenv("BACK_SPASM_CDS_MODE", raising=False)
    monkeypatch.delenv("BACK_SPASM_CDS_TRUSTED_CLIENTS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "18999"]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


def test_production_settings_need_trusted_clients():
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="trusted_clients"):
        Settings.load(environ={}, overrides={"mode": "production"})


def test_production_settings_need_a_public_base_url(tmp_path, clients_file):
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="public_base_url"):
        Settings.load(environ={}, overrides={"mode": "production", "trusted_clients": str(clients_file)})


def test_a_forged_host_header_moves_neither_aud_nor_the_card_links(engine, tmp_path, clients_file, keys, patient):
    app, recorder = make_app(engine, tmp_path, clients_file)
    forged = token(keys, aud=f"http://evil.example/cds-services/{SERVICE}")
    answer = app.test_client().post(f"/cds-services/{SERVICE}", json=_complete(hook_body(patient), app),
                                    headers={"Authorization": "Bearer " + forged, "Host": "evil.example"})
    assert answer.status_code == 401 and recorder.calls == 0
    answer = app.test_client().post(f"/cds-services/{SERVICE}", json=_complete(hook_body(patient), app),
                                    headers={"Authorization": "Bearer " + token(keys), "Host": "evil.example"})
    assert answer.status_code == 200
    links = [card["source"]["url"] for card in answer.json["cards"]]
    assert links and all(link.startswith(f"{BASE}/protocol") for link in links)


# -- logs ------------------------------------------------------------------------------------------------------

def test_logs_hold_no_patient_data_and_no_tokens(engine, tmp_path, clients_file, keys, httpserver):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    from service.logs import JsonFormatter

    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("back_spasm_cds")
    logger.addHandler(handler)
    try:
        app, _ = make_app(engine, tmp_path, clients_file)
        phi = ["Zebulon", "Quackenbush", "SSN-123-45-6789", "1961-02-03", "Hidden Valley Road 42", "pat-zq-889"]
        patient = Patient(65, patient_id="pat-zq-889", birth_date="1961-02-03")
        patient.patient.update(name=[{"family": "Quackenbush", "given": ["Zebulon"]}], address=[{"line": ["Hidden Valley Road 42"]}],
                               identifier=[{"system": "urn:ssn", "value": "SSN-123-45-6789"}])
        patient.spasm(20)
        patient.medication(PHENELZINE)
        good = "Bearer " + token(keys)
        body = _complete(hook_body(patient), app)
        body["prefetch"]["medicationRequest"] = {"resourceType": "Bundle", "type": "searchset",
                                                 "entry": [{"resource": r} for r in patient.resources if r["resourceType"] == "MedicationRequest"]}
        assert _post(app, body, good).status_code == 200
        assert _post(app, body, good).status_code == 401
        bad_body = hook_body(patient, server=httpserver.url_for("/fhir"), token_value="ehr-secret-access-token")
        bad_body["context"]["patientId"] = "pat-zq-889"
        assert _post(app, bad_body, "Bearer " + token(keys)).status_code == 412
        draft = patient.draft_medication(CYCLOBENZAPRINE_10)
        select = {"hook": "order-select", "hookInstance": str(uuid.uuid4()),
                  "context": {"patientId": patient.id, "userId": "Practitioner/1", "selections": [f"MedicationRequest/{draft['id']}"],
                              "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}}}
        aud = f"{BASE}/cds-services/back-spasm-order-review-order-select"
        app.test_client().post("/cds-services/back-spasm-order-review-order-select", json=select,
                               headers={"Authorization": "Bearer " + token(keys, aud=aud)})
        app.test_client().post(f"/cds-services/{SERVICE}", data=b"{not json with Quackenbush", headers={"Authorization": good})
        text = stream.getvalue()
    finally:
        logger.removeHandler(handler)
    assert '"event":"request"' in text
    for secret in phi + ["ehr-secret-access-token", good.split(" ")[1], good.split(" ")[1].split(".")[1]]:
        assert secret not in text, secret
    assert "jti already used" in text  # the log says which check failed


def test_the_tenant_claim_goes_into_the_log_line(engine, tmp_path, clients_file, keys, patient, access_log):
    app, _ = make_app(engine, tmp_path, clients_file)
    answer = _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, tenant="hospital-north"))
    assert answer.status_code == 200
    requests = [line for line in access_log() if line.get("event") == "request"]
    assert requests and requests[-1]["tenant"] == "hospital-north" and requests[-1]["client"] == ISSUER
    _post(app, _complete(hook_body(patient), app), "Bearer " + token(keys, tenant={"id": "x"}))
    assert "tenant" not in [line for line in access_log() if line.get("event") == "request"][-1]


def test_the_tenant_claim_of_a_fhir_api_call_goes_into_the_log_line(engine, tmp_path, clients_file, keys, access_log):
    app, _ = make_app(engine, tmp_path, clients_file)
    answer = app.test_client().get("/fhir/PlanDefinition", headers={
        "Authorization": "Bearer " + token(keys, aud=f"{BASE}/fhir/PlanDefinition", tenant="hospital-south")})
    assert answer.status_code == 200
    requests = [line for line in access_log() if line.get("event") == "request"]
    assert requests[-1]["tenant"] == "hospital-south" and requests[-1]["client"] == ISSUER
