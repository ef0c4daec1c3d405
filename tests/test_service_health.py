"""Liveness and readiness probes.

/healthz says the process answers; /readyz says the service can do its work: the protocol is compiled
and the feedback database can be used. When the database cannot be used, readiness is 503 so that an
orchestrator stops sending traffic to this instance.
"""

from __future__ import annotations

import sqlite3

import pytest

from service import state_of
from tests.service_helpers import (
    PATIENT_VIEW,
    SERVICES,
    capture_body,
    in_new_thread,
    make_app,
)


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def test_healthz_answers_200(app):
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200 and answer.is_json
    assert answer.get_json()["status"] == "ok"


def test_readyz_answers_200_with_its_checks(app):
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 200 and answer.is_json
    body = answer.get_json()
    assert body["status"] == "ready"
    assert body["checks"] and all(value is True for value in body["checks"].values())
    assert {"content", "database"} <= set(body["checks"])
    assert set(body["services"]) == set(SERVICES.values())
    assert body["version"] == state_of(app).engine.content.publication["version"]


def test_probes_need_no_request_body_or_headers(app):
    client = app.test_client()
    for path in ("/healthz", "/readyz"):
        assert client.get(path, headers={}).status_code == 200
        assert client.head(path).status_code == 200


def test_readyz_is_503_when_the_database_file_cannot_be_opened(app, tmp_path):
    database = tmp_path / "cds.sqlite"
    for path in tmp_path.glob("cds.sqlite*"):
        path.unlink()
    database.mkdir()
    answer = in_new_thread(lambda: app.test_client().get("/readyz"))
    assert answer.status_code == 503 and answer.is_json
    body = answer.get_json()
    assert body["status"] != "ready"
    assert body["checks"]["database"] is False and body["checks"]["content"] is True


def test_readyz_is_503_when_the_database_fails(app, monkeypatch):
    store = state_of(app).store

    def broken(call):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store._database, "offload", broken)
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"] is False
    assert app.test_client().get("/healthz").status_code == 200, "the process is still alive"


def test_readyz_is_200_again_once_the_database_is_back(app, tmp_path):
    database = tmp_path / "cds.sqlite"
    for path in tmp_path.glob("cds.sqlite*"):
        path.unlink()
    database.mkdir()
    assert in_new_thread(lambda: app.test_client().get("/readyz")).status_code == 503
    database.rmdir()
    assert in_new_thread(lambda: app.test_client().get("/readyz")).status_code == 200


def test_readyz_is_503_when_the_database_has_lost_its_tables(app):
    with sqlite3.connect(state_of(app).store.path) as db:
        db.execute("DROP TABLE feedback")
        db.execute("DROP TABLE issued_suggestion")
        db.execute("DROP TABLE issued_card")
    client = app.test_client()
    feedback = client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json=capture_body("feedback-overridden-patient-view.json"))
    assert feedback.status_code >= 500, "the database cannot be used"
    assert client.get("/readyz").status_code == 503
