"""Which web pages may call the service from a browser: the sandbox and loopback pages in development, the
configured origins, never any site. A page on another site cannot use the service to probe the network."""

from __future__ import annotations

import json

import pytest

from tests.patients import Patient
from tests.service_helpers import PATIENT_VIEW, hook_body, make_app

SANDBOX = "https://sandbox.cds-hooks.org"
EVIL = "https://evil.example"


def preflight(client, origin: str):
    return client.open(f"/cds-services/{PATIENT_VIEW}", method="OPTIONS",
                       headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                "Access-Control-Request-Headers": "authorization,content-type"})


@pytest.fixture
def development(tmp_path):
    return make_app(tmp_path).test_client()


@pytest.mark.parametrize("origin", [SANDBOX, "http://localhost:3000", "http://127.0.0.1:8090", "https://localhost", "http://[::1]:8080"])
def test_development_answers_the_sandbox_and_loopback_pages(development, origin):
    assert preflight(development, origin).headers.get("Access-Control-Allow-Origin") == origin


@pytest.mark.parametrize("origin", [EVIL, "http://localhost.evil.example", "http://127.0.0.1.evil.example:80", "null",
                                    "https://sandbox.cds-hooks.org.evil.example", "http://localhost:3000/x"])
def test_development_does_not_answer_other_sites(development, origin):
    assert "Access-Control-Allow-Origin" not in preflight(development, origin).headers


def test_a_text_plain_post_from_another_site_is_refused_before_any_server_is_called(tmp_path, httpserver):
    """The port probe: a simple (no-preflight) POST naming a loopback FHIR server gets a 415, no CORS header, and
    the named server is never called."""
    client = make_app(tmp_path).test_client()
    p = Patient(45)
    p.spasm(20)
    body = hook_body(make_app(tmp_path / "seed"), "patient-view", p, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    answer = client.post(f"/cds-services/{PATIENT_VIEW}", data=json.dumps(body), headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert answer.status_code == 415
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert httpserver.log == []


def test_production_answers_only_the_configured_origins(tmp_path):
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": "https://ehr.example.org", "jku": ["https://ehr.example.org/jwks.json"]}]}))
    client = make_app(tmp_path, mode="production", trusted_clients=str(clients), public_base_url="https://cds.example.org",
                      cors_origins=["https://ehr.example.org"]).test_client()
    assert preflight(client, "https://ehr.example.org").headers.get("Access-Control-Allow-Origin") == "https://ehr.example.org"
    for origin in (SANDBOX, "http://localhost:3000", EVIL):
        assert "Access-Control-Allow-Origin" not in preflight(client, origin).headers
