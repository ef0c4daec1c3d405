"""Shared state: the stores on SQLite and on PostgreSQL, and two service instances on one PostgreSQL database.

The PostgreSQL tests need a server (see tests/storage_backends.py); each gets a database of its own, dropped
afterwards. Without a server they are skipped, and the same store tests still run on SQLite.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import service.cds_hooks.feedback
from service import state_of
from service.cds_hooks.auth import ReplayCache
from service.cds_hooks.cards import IssuedCard
from service.cds_hooks.feedback import FeedbackStore, StorageUnavailable, parse_feedback
from tests.live_server import LiveServer
from tests.patients import Patient
from tests.service_helpers import PATIENT_VIEW, by_topic, cards_of, hook_body, make_app
from tests.storage_backends import BACK_ENDS, POSTGRESQL, admin_query, fresh_database, needs_postgresql

BASE = "https://cds.example.org"
ISSUER = "https://ehr.example.org"
FEEDBACK = f"/cds-services/{PATIENT_VIEW}/feedback"
MOMENT = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(params=BACK_ENDS)
def database(request, tmp_path) -> Iterator[str]:
    """The ``database`` setting of each back end: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cds.sqlite'}"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
def postgresql() -> Iterator[str]:
    """A fresh PostgreSQL database (the test is skipped without a server)."""
    if not POSTGRESQL:
        pytest.skip("no PostgreSQL server: set BACK_SPASM_CDS_TEST_POSTGRESQL (.ci/run does)")
    with fresh_database() as url:
        yield url


def issued(*uuids: str) -> list[IssuedCard]:
    return [IssuedCard(u, "act-phase-plan", "phase-plan", "info", [f"{u}-s1"]) for u in uuids]


def overridden(card: str, stamp: str = "2026-11-25T10:01:00Z") -> list[service.cds_hooks.feedback.FeedbackItem]:
    return parse_feedback({"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": stamp}]})


# -- the stores, on both back ends -----------------------------------------------------------------------------------------


def test_feedback_joins_a_card_another_instance_issued(database):
    first, second = FeedbackStore(database, clock=lambda: MOMENT), FeedbackStore(database, clock=lambda: MOMENT)
    first.record_cards(PATIENT_VIEW, "patient-view", "hi-1", issued("card-1"))
    assert second.record_feedback(PATIENT_VIEW, overridden("card-1") + overridden("card-unknown")) == 2
    assert second.record_feedback(PATIENT_VIEW, overridden("card-1")) == 0, "the same item again is kept once"
    rows = {row["card_uuid"]: row for row in first.feedback()}
    assert rows["card-1"]["card_known"] == 1 and rows["card-1"]["action_id"] == "act-phase-plan"
    assert rows["card-unknown"]["card_known"] == 0 and rows["card-unknown"]["action_id"] is None
    assert second.card("card-1")["hook_instance"] == "hi-1"
    assert first.ready() and second.ready()


def test_a_token_id_is_accepted_once_whichever_instance_sees_it(database):
    path = FeedbackStore(database).path
    caches = [ReplayCache(path), ReplayCache(path)]
    jtis = [f"jti-{i}" for i in range(100)]
    accepted: list[str] = []
    lock = threading.Lock()

    def use(cache: ReplayCache, order: list[str]) -> None:
        for jti in order:
            if cache.first_use("iss", jti, 2**40, 0):
                with lock:
                    accepted.append(jti)

    threads = [threading.Thread(target=use, args=(caches[i % 2], jtis if i % 3 else jtis[::-1])) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(accepted) == sorted(jtis), "every token id accepted once, none twice"


def test_records_past_the_retention_are_purged_by_any_instance(database):
    FeedbackStore(database, clock=lambda: MOMENT).record_cards(PATIENT_VIEW, "patient-view", "hi-1", issued("old"))
    later = FeedbackStore(database, clock=lambda: MOMENT + timedelta(days=91))
    later.record_cards(PATIENT_VIEW, "patient-view", "hi-2", issued("new"))
    assert later.card("old") is None and later.card("new") is not None


# -- PostgreSQL: migrations, lost connections, a database that is down ----------------------------------------------------


def test_only_the_card_record_gives_up_the_commit_flush_and_each_write_is_one_exchange(postgresql, monkeypatch):
    """The card record commits with synchronous_commit off, sent as one pipeline; a token id is one autocommitted
    statement (flushed as the server's setting says); feedback keeps the server's setting."""
    from service.cds_hooks.postgresql import PgSession

    sent: list[tuple[str, bool]] = []
    execute = PgSession.execute

    def spy(self: PgSession, query: str, parameters: Any = ()) -> Any:
        sent.append((query.split()[0] + (" " + query.split()[2] if query.startswith("SET") else ""),
                     self.connection.pgconn.pipeline_status != 0))
        return execute(self, query, parameters)

    monkeypatch.setattr(PgSession, "execute", spy)
    store, cache = FeedbackStore(postgresql, clock=lambda: MOMENT), ReplayCache(postgresql)
    writes = {}
    for name, write in [("cards", lambda: store.record_cards(PATIENT_VIEW, "patient-view", "hi-1", issued("card-1"))),
                        ("cards again", lambda: store.record_cards(PATIENT_VIEW, "patient-view", "hi-2", issued("card-2"))),
                        ("jti", lambda: cache.first_use("iss", "jti-1", 2**40, 0)),
                        ("jti again", lambda: cache.first_use("iss", "jti-2", 2**40, 1)),
                        ("feedback", lambda: store.record_feedback(PATIENT_VIEW, overridden("card-1")))]:
        sent.clear()
        write()
        writes[name] = list(sent)
    assert writes["cards again"] == [("BEGIN", True), ("SET synchronous_commit", True), ("COMMIT", True)]
    assert writes["jti again"] == [("INSERT", False)]
    assert ("SET synchronous_commit", True) not in writes["feedback"] + writes["jti"]
    assert [q for q, _ in writes["jti"]] == ["DELETE", "INSERT"], "the first write of a process purges expired ids with it"
    assert store.card("card-2") is not None and not cache.first_use("iss", "jti-2", 2**40, 2)


def test_the_schema_is_migrated_once_and_a_newer_schema_is_refused(postgresql):
    from service.cds_hooks.postgresql import SCHEMA_VERSION, SchemaTooNew

    FeedbackStore(postgresql)
    ReplayCache(postgresql)
    FeedbackStore(postgresql)
    assert admin_query(postgresql, "SELECT version FROM schema_version ORDER BY version") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    admin_query(postgresql, "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew):
        FeedbackStore(postgresql)


def test_a_lost_connection_is_opened_again_and_the_write_kept(postgresql):
    store = FeedbackStore(postgresql, clock=lambda: MOMENT)
    store.record_cards(PATIENT_VIEW, "patient-view", "hi-1", issued("card-1"))
    admin_query(postgresql, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert store.record_feedback(PATIENT_VIEW, overridden("card-1")) == 1
    assert [row["card_known"] for row in store.feedback()] == [1]


@contextmanager
def database_down(url: str) -> Iterator[None]:
    """The database refuses every connection (and its open ones are cut) until the block ends."""
    name = urlsplit(url).path.lstrip("/")
    admin = urlsplit(url)._replace(path=urlsplit(POSTGRESQL).path).geturl()
    admin_query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin_query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield
    finally:
        admin_query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_while_the_database_is_down_writes_are_503_cards_still_answered_and_readiness_comes_back(postgresql, tmp_path, monkeypatch):
    monkeypatch.setattr(service.cds_hooks.feedback, "FIRST_BACKOFF_SECONDS", 0.001)
    app = make_app(tmp_path, database=postgresql)
    client = app.test_client()
    item = {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}
    assert client.get("/readyz").status_code == 200
    with database_down(postgresql):
        assert client.get("/readyz").status_code == 503
        refused = client.post(FEEDBACK, json={"feedback": [item]})
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        patient = Patient(45)
        patient.spasm(20)
        cards = cards_of(client, "patient-view", hook_body(app, "patient-view", patient))
        assert by_topic(cards, "phase-plan"), "the clinician gets the cards; only their record is given up"
        with pytest.raises(StorageUnavailable):
            state_of(app).store.record_feedback(PATIENT_VIEW, overridden("c-1"))
    assert client.get("/readyz").status_code == 200
    assert client.post(FEEDBACK, json={"feedback": [item]}).status_code == 200
    assert [row["card_uuid"] for row in state_of(app).store.feedback()] == ["c-1"]


def test_no_text_from_the_record_or_a_comment_reaches_a_postgresql_table(postgresql, tmp_path):
    from tests.test_storage_privacy import COMMENT, DRUG, RXNORM, leaked, warning_and_plan, zyxolamine_patient

    app = make_app(tmp_path, database=postgresql)
    client = app.test_client()
    warning, plan = warning_and_plan(app)
    patient = zyxolamine_patient()
    assert DRUG in str(cards_of(client, "order-select", hook_body(app, "order-select", patient, [patient.draft_medication((RXNORM, "828348", DRUG))])))
    items = [{"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:02:00Z",
              "overrideReason": {"reason": warning["overrideReasons"][0], "userComment": COMMENT}}]
    assert client.post(FEEDBACK, json={"feedback": items}).status_code == 200
    tables = [row[0] for row in admin_query(postgresql, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert {"issued_card", "issued_suggestion", "feedback", "seen_jti", "schema_version"} == set(tables)
    stored = "".join(str(row) for table in tables for row in admin_query(postgresql, f"SELECT t::text FROM {table} t"))
    assert leaked(stored.encode()) == []
    assert state_of(app).store.card(warning["uuid"])["topic"] == "cyclobenzaprine" and plan["uuid"] in stored
    assert state_of(app).store.feedback(warning["uuid"])[0]["comment_length"] == len(COMMENT)


# -- two service instances on one PostgreSQL -----------------------------------------------------------------------------


class Signer:
    """An EHR's signing key, and the trusted-clients file that names its public key."""

    def __init__(self, folder: Path):
        self.key = ec.generate_private_key(ec.SECP384R1())
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.clients = folder / "clients.json"
        self.clients.write_text(json.dumps({"clients": [{"iss": ISSUER, "jwks": {"keys": [{**public, "kid": "k1", "alg": "ES384", "use": "sig"}]}}]}))

    def token(self, path: str) -> str:
        """A fresh token (its own jti) for one call to ``path``."""
        now = int(datetime.now(timezone.utc).timestamp())
        claims = {"iss": ISSUER, "aud": BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


def post(port: int, path: str, body: Any, token: str) -> tuple[int, Any]:
    """POST JSON with a bearer token; the status and the decoded answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        connection.close()


@pytest.fixture
def two_instances(postgresql, tmp_path) -> Iterator[tuple[LiveServer, LiveServer, Signer, str]]:
    """Two services in production mode on one PostgreSQL database, trusting one EHR's key."""
    signer = Signer(tmp_path)
    env = {"BACK_SPASM_CDS_DATABASE": postgresql, "BACK_SPASM_CDS_MODE": "production", "BACK_SPASM_CDS_PUBLIC_BASE_URL": BASE,
           "BACK_SPASM_CDS_TRUSTED_CLIENTS": str(signer.clients), "BACK_SPASM_CDS_WORKERS": "2"}
    servers = [LiveServer(tmp_path / f"instance-{i}.sqlite", env=env) for i in (1, 2)]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1], signer, postgresql
    finally:
        for server in servers:
            server.stop()


def issue_cards(server: LiveServer, signer: Signer, tmp: Path) -> list[str]:
    """The uuids of the cards one patient-view call to ``server`` answers."""
    patient = Patient(45)
    patient.spasm(20)
    path = f"/cds-services/{PATIENT_VIEW}"
    status, answer = post(server.port, path, hook_body(make_app(tmp), "patient-view", patient), signer.token(path))
    assert status == 200, answer
    return [card["uuid"] for card in answer["cards"]]


@needs_postgresql
def test_two_instances_share_token_ids_cards_and_feedback_and_lose_no_write(two_instances, tmp_path):
    first, second, signer, url = two_instances
    path = f"/cds-services/{PATIENT_VIEW}"

    patient = Patient(45)
    patient.spasm(20)
    token = signer.token(path)
    body = hook_body(make_app(tmp_path / "helper"), "patient-view", patient)
    assert post(first.port, path, body, token)[0] == 200
    assert post(second.port, path, body, token)[0] == 401, "a token used on one instance is refused on the other"

    from_first = issue_cards(first, signer, tmp_path / "helper")
    from_second = issue_cards(second, signer, tmp_path / "helper")
    for server, cards in ((second, from_first), (first, from_second)):
        items = [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"} for card in cards]
        assert post(server.port, FEEDBACK, {"feedback": items}, signer.token(FEEDBACK))[0] == 200
    joined = dict(admin_query(url, "SELECT card_uuid, card_known FROM feedback"))
    assert joined == dict.fromkeys(from_first + from_second, 1), "feedback posted to either instance joins the other's cards"

    acknowledged: list[str] = []
    refused: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        server = (first, second)[number % 2]
        for sent in range(10):
            stamp = f"2026-11-25T11:00:00.{number:02d}{sent:04d}Z"
            item = {"card": (from_first + from_second)[sent % 2], "outcome": "overridden", "outcomeTimestamp": stamp}
            status, answer = post(server.port, FEEDBACK, {"feedback": [item]}, signer.token(FEEDBACK))
            with lock:
                (acknowledged.append(stamp) if status == 200 else refused.append((status, answer)))

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(120)
    assert refused == [] and len(acknowledged) == 160
    stored = {row[0] for row in admin_query(url, "SELECT outcome_timestamp FROM feedback WHERE outcome_timestamp LIKE %s", ("%T11:%",))}
    assert stored == set(acknowledged), "every write acknowledged by either instance is stored"


# -- the database setting ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, kind", [("cds.sqlite", "sqlite"), ("sqlite:///data/cds.sqlite", "sqlite"),
                                           ("postgresql://cds@db.example.org:5432/cds", "postgresql")])
def test_the_database_setting_names_a_file_or_a_url(setting, kind):
    from service.config import Settings

    assert Settings.load(environ={}, overrides={"database": setting}).database == setting
    assert service.cds_hooks.feedback.database_kind(setting) == kind


def test_an_sqlite_url_opens_the_file_it_names(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'named.sqlite'}")
    assert store.path == str(tmp_path / "named.sqlite") and (tmp_path / "named.sqlite").is_file()


@pytest.mark.parametrize("setting", ["mysql://cds@db/cds", "http://db.example.org/cds"])
def test_a_database_url_of_another_kind_stops_the_service(setting):
    from service.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="database"):
        Settings.load(environ={}, overrides={"database": setting})


def test_each_connection_waits_for_a_row_lock_at_most_the_lock_timeout_and_keeps_the_url_options(postgresql):
    from service.cds_hooks.postgresql import LOCK_TIMEOUT_MS

    store = FeedbackStore(postgresql + "?options=-c%20statement_timeout%3D5000")
    settings = store._database.read(lambda db: db.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')").fetchone())
    assert settings == (f"{LOCK_TIMEOUT_MS // 1000}s", "5s")
