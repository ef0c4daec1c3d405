"""What the database keeps, written as the attack: text from a patient's record or a clinician's comment must not
reach the SQLite files or the log, however it is sent.

The record holds a drug whose text is distinctive ("Zyxolamine 99 mg", coded as sertraline so that the protocol
names it in a card's summary); the feedback carries a comment naming a person. The tests read the database, its
WAL and shared-memory files as raw bytes, and every log line the service wrote, and look for those strings. A
database made by the previous version (which kept summaries, labels and comments) is opened and must keep its
rows and lose the text. Nothing is kept for ever: with the store's clock moved past the retention, old cards,
suggestions, feedback and token ids are deleted, and the service goes on answering. The files are the service
user's alone (0600), whatever the umask, and files left readable by others are tightened at start. The tests of what
is recorded and purged run on PostgreSQL too when there is a server (tests/storage_backends.py).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service import state_of
from service.cds_hooks.auth import ReplayCache
from service.cds_hooks.cards import IssuedCard
from service.cds_hooks.feedback import (
    MAX_RECORDED_CARDS,
    MAX_RECORDED_SUGGESTIONS,
    FeedbackItem,
    FeedbackStore,
    parse_feedback,
)
from service.config import ConfigError, Settings
from service.logs import JsonFormatter
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, RXNORM, SERTRALINE, Patient
from tests.service_helpers import (
    ORDER_SIGN,
    PATIENT_VIEW,
    by_topic,
    cards_of,
    hook_body,
    in_new_thread,
    make_app,
)
from tests.storage_backends import BACK_ENDS, admin_query, fresh_database

DRUG = "Zyxolamine 99 mg"
COMMENT = "Mrs Quillfeather of 12 Larkspur Row refused; her daughter agrees"
SECRETS = (DRUG.encode(), b"Zyxolamine", b"Quillfeather", b"Larkspur")
FEEDBACK = f"/cds-services/{PATIENT_VIEW}/feedback"

#: The schema of the version that kept summaries, suggestion labels and comments verbatim.
PREVIOUS_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued_card (
    uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, hook TEXT NOT NULL, hook_instance TEXT NOT NULL, action_id TEXT NOT NULL,
    topic TEXT, indicator TEXT NOT NULL, summary TEXT NOT NULL, issued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issued_suggestion (
    uuid TEXT PRIMARY KEY, card_uuid TEXT NOT NULL REFERENCES issued_card(uuid), label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL, outcome TEXT NOT NULL,
    accepted_suggestions TEXT, override_system TEXT, override_code TEXT, override_display TEXT, user_comment TEXT,
    outcome_timestamp TEXT NOT NULL, received_at TEXT NOT NULL, card_known INTEGER NOT NULL,
    UNIQUE (service_id, card_uuid, outcome, outcome_timestamp));
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
"""


def query(path: str | Path, statement: str, parameters: tuple = ()) -> list[tuple]:
    """The rows of a statement run on the database (an SQLite file or a PostgreSQL URL) outside the service."""
    if str(path).startswith("postgresql://"):
        return [tuple(row) for row in admin_query(str(path), statement.replace("?", "%s"), parameters)]
    with sqlite3.connect(path) as db:
        return db.execute(statement, parameters).fetchall()


def count(path: str | Path, table: str) -> int:
    """How many rows a table of the database holds."""
    return query(path, f"SELECT count(*) FROM {table}")[0][0]


def database_bytes(path: str | Path) -> bytes:
    """The database file, its WAL and its shared-memory file, as raw bytes."""
    return b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm") if Path(f"{path}{suffix}").exists())


def leaked(data: bytes) -> list[bytes]:
    return [secret for secret in SECRETS if secret in data]


def zyxolamine_patient() -> Patient:
    """A back spasm, on a drug the record names 'Zyxolamine 99 mg' (coded as sertraline: the serotonin caution names it)."""
    patient = Patient(56)
    patient.spasm(20)
    patient.medication((RXNORM, "312941", DRUG))
    return patient


@pytest.fixture(params=BACK_ENDS)
def database(request, tmp_path) -> Iterator[str]:
    """The database setting of each back end: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "service" / "cds.sqlite")
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
def app(tmp_path, database):
    return make_app(tmp_path / "service", database=database)


def sqlite_only(app) -> None:
    """Skip a test that reads the SQLite files as raw bytes on PostgreSQL (tests/test_postgresql.py reads its tables)."""
    if state_of(app).store.kind != "sqlite":
        pytest.skip("reads the SQLite files as raw bytes; tests/test_postgresql.py checks the PostgreSQL tables")


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """Every record logged meanwhile, the service's and any library's (all levels), as the JSON lines the service writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("back_spasm_cds"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
def log_output(app):
    """What the service logs from here on."""
    with captured_log() as stream:
        yield stream


def warning_and_plan(app) -> tuple[dict, dict]:
    """The cards of a patient-view call for the Zyxolamine patient: the serotonin warning (which names the drug) and the plan."""
    cards = cards_of(app.test_client(), "patient-view", hook_body(app, "patient-view", zyxolamine_patient()))
    warning = by_topic(cards, "cyclobenzaprine")
    assert DRUG in warning["summary"], "the attack needs the record's text on the card"
    return warning, by_topic(cards, "phase-plan")


# -- text from the record -------------------------------------------------------------------------------------------


def test_record_text_on_cards_reaches_neither_the_database_nor_the_log(app, log_output):
    sqlite_only(app)
    client = app.test_client()
    warning, plan = warning_and_plan(app)
    patient = zyxolamine_patient()
    order_select = hook_body(app, "order-select", patient, [patient.draft_medication((RXNORM, "828348", DRUG))])
    assert DRUG in str(cards_of(client, "order-select", order_select))

    store = state_of(app).store
    assert leaked(database_bytes(store.path)) == []
    assert leaked(log_output.getvalue().encode()) == []
    assert store.card(warning["uuid"])["topic"] == "cyclobenzaprine", "the card is recorded, by its codes"
    assert "summary" not in store.card(warning["uuid"])
    with sqlite3.connect(store.path) as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(issued_suggestion)")] == ["uuid", "card_uuid"]
        assert db.execute("SELECT count(*) FROM issued_suggestion WHERE uuid = ?", (plan["suggestions"][0]["uuid"],)).fetchone()[0] == 1


def test_a_comment_is_kept_only_as_its_length(app, log_output):
    sqlite_only(app)
    warning, plan = warning_and_plan(app)
    reason = warning["overrideReasons"][0]
    items = [{"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:02:00Z",
              "overrideReason": {"reason": reason, "userComment": COMMENT}},
             {"card": plan["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:02:01Z",
              "acceptedSuggestions": [{"id": plan["suggestions"][0]["uuid"]}], "overrideReason": {"userComment": COMMENT}}]
    answer = app.test_client().post(FEEDBACK, json={"feedback": items})
    assert answer.status_code == 200 and answer.get_json() == {"received": 2, "stored": 2}

    store = state_of(app).store
    assert leaked(database_bytes(store.path)) == []
    assert leaked(log_output.getvalue().encode()) == []
    overridden, accepted = store.feedback(warning["uuid"]) + store.feedback(plan["uuid"])
    assert (overridden["override_code"], overridden["override_display"], overridden["comment_length"]) == \
        (reason["code"], reason["display"], len(COMMENT))
    assert accepted["comment_length"] == len(COMMENT) and accepted["card_known"] == 1


# -- sizes -----------------------------------------------------------------------------------------------------------


def test_a_call_with_many_draft_orders_gets_all_its_cards_and_adds_a_bounded_record(app, log_output):
    patient = Patient(70)
    patient.spasm(20)
    patient.medication(SERTRALINE)
    drafts = [patient.draft_medication(CYCLOBENZAPRINE_10) for _ in range(40)]
    cards = cards_of(app.test_client(), "order-sign", hook_body(app, "order-sign", patient, drafts))
    assert len(cards) > MAX_RECORDED_CARDS
    store = state_of(app).store
    assert count(store.path, "issued_card") == MAX_RECORDED_CARDS
    assert store.card(cards[0]["uuid"]) is not None and store.card(cards[-1]["uuid"]) is None
    late = {"card": cards[-1]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:05:00Z"}
    assert app.test_client().post(f"/cds-services/{ORDER_SIGN}/feedback", json={"feedback": [late]}).status_code == 200
    assert store.feedback(cards[-1]["uuid"])[0]["card_known"] == 0, "feedback on a card not recorded is still kept"
    assert '"cards-recorded-in-part"' in log_output.getvalue()


def test_at_most_so_many_suggestions_of_a_card_are_recorded(database):
    store = FeedbackStore(database)
    store.record_cards(PATIENT_VIEW, "patient-view", "hook-1",
                       [IssuedCard("card-1", "action", "topic", "info", [f"s-{n}" for n in range(3 * MAX_RECORDED_SUGGESTIONS)])])
    assert count(store.path, "issued_suggestion") == MAX_RECORDED_SUGGESTIONS


# -- a database made by the previous version -------------------------------------------------------------------------


def _write_unflushed(path: str) -> None:
    """A process that commits feedback and dies without closing the database: the row is left in the WAL only."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("INSERT INTO feedback (service_id, card_uuid, outcome, user_comment, outcome_timestamp, received_at, card_known)"
               " VALUES (?, 'old-card', 'overridden', ?, '2026-11-20T09:00:00Z', '2026-11-20T09:00:01.000Z', 1)", (PATIENT_VIEW, COMMENT))
    os._exit(0)


def previous_version_database(path: Path) -> None:
    """A database as the previous version left it: a card naming the drug, its labelled suggestion, feedback with comments
    (one in the database file, one still in the WAL of a killed worker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(PREVIOUS_SCHEMA)
        db.execute("INSERT INTO issued_card VALUES ('old-card', ?, 'patient-view', 'hook-1', 'cyclobenzaprine', 'cyclobenzaprine',"
                   " 'warning', ?, '2026-11-19T08:00:00.000Z')", (PATIENT_VIEW, f"Serotonin syndrome risk: cyclobenzaprine with {DRUG}"))
        db.execute("INSERT INTO issued_suggestion VALUES ('old-suggestion', 'old-card', ?)", (f"Stop {DRUG}",))
        db.execute("INSERT INTO feedback (service_id, card_uuid, outcome, accepted_suggestions, override_system, override_code,"
                   " override_display, user_comment, outcome_timestamp, received_at, card_known)"
                   " VALUES (?, 'old-card', 'overridden', NULL, 'http://example.org/reasons', 'benefit', 'Benefit outweighs risk', ?,"
                   " '2026-11-19T08:05:00Z', '2026-11-19T08:05:01.000Z', 1)", (PATIENT_VIEW, COMMENT))
        db.execute("INSERT INTO feedback (service_id, card_uuid, outcome, accepted_suggestions, outcome_timestamp, received_at, card_known)"
                   " VALUES (?, 'old-card', 'accepted', '[\"old-suggestion\"]', '2026-11-19T08:06:00Z', '2026-11-19T08:06:01.000Z', 1)",
                   (PATIENT_VIEW,))
    worker = multiprocessing.get_context("fork").Process(target=_write_unflushed, args=(str(path),))
    worker.start()
    worker.join(30)
    assert Path(f"{path}-wal").stat().st_size > 0 and leaked(database_bytes(path)), "the old database holds the text"


def test_a_database_of_the_previous_version_keeps_its_feedback_and_loses_the_text(tmp_path):
    path = tmp_path / "service" / "cds.sqlite"
    previous_version_database(path)
    app = make_app(tmp_path / "service")
    store = state_of(app).store

    rows = store.feedback("old-card")
    assert [(r["id"], r["outcome"], r["comment_length"], r["override_code"], r["action_id"]) for r in rows] == [
        (1, "overridden", len(COMMENT), "benefit", "cyclobenzaprine"),
        (2, "accepted", None, None, "cyclobenzaprine"),
        (3, "overridden", len(COMMENT), None, "cyclobenzaprine")]
    assert store.card("old-card") == {"uuid": "old-card", "service_id": PATIENT_VIEW, "hook": "patient-view", "hook_instance": "hook-1",
                                      "action_id": "cyclobenzaprine", "topic": "cyclobenzaprine", "indicator": "warning",
                                      "issued_at": "2026-11-19T08:00:00.000Z"}
    assert leaked(database_bytes(path)) == []

    warning, _ = warning_and_plan(app)
    late = {"card": "old-card", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
    new = {"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
           "overrideReason": {"userComment": COMMENT}}
    answer = app.test_client().post(FEEDBACK, json={"feedback": [late, new]})
    assert answer.status_code == 200 and answer.get_json()["stored"] == 2
    assert [r["id"] for r in store.feedback()] == [1, 2, 3, 4, 5], "ids go on from the old sequence"
    assert all(r["card_known"] == 1 for r in store.feedback())
    assert leaked(database_bytes(path)) == []


def test_a_database_of_this_version_opens_while_another_process_holds_the_write_lock(tmp_path, monkeypatch):
    monkeypatch.setattr("service.cds_hooks.feedback.BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "cds.sqlite"
    FeedbackStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert FeedbackStore(path).ready()
    finally:
        other.rollback()
        other.close()


def test_opening_an_upgraded_database_again_changes_nothing(tmp_path):
    path = tmp_path / "cds.sqlite"
    previous_version_database(path)
    FeedbackStore(path)
    before = sqlite3.connect(path).execute("SELECT sql FROM sqlite_schema ORDER BY name").fetchall()
    store = FeedbackStore(path)
    assert sqlite3.connect(path).execute("SELECT sql FROM sqlite_schema ORDER BY name").fetchall() == before
    assert len(store.feedback()) == 3


# -- retention ----------------------------------------------------------------------------------------------------


class MovableClock:
    """The store's clock, set by the test."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def visit(app, hours_later: float = 0) -> tuple[dict, dict]:
    """A patient-view call for a new patient and feedback on both its cards: (warning, plan)."""
    warning, plan = warning_and_plan(app)
    stamp = (CLOCK + timedelta(hours=hours_later)).isoformat().replace("+00:00", "Z")
    items = [{"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp},
             {"card": plan["uuid"], "outcome": "accepted", "outcomeTimestamp": stamp, "acceptedSuggestions": [{"id": plan["suggestions"][0]["uuid"]}]}]
    answer = app.test_client().post(FEEDBACK, json={"feedback": items})
    assert answer.status_code == 200 and answer.get_json()["stored"] == 2
    return warning, plan


def test_cards_suggestions_and_feedback_older_than_the_retention_are_deleted(app, log_output):
    store = state_of(app).store
    clock = store.clock = MovableClock(datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc))
    old_warning, old_plan = visit(app)
    clock.now += timedelta(days=60)
    recent_warning, recent_plan = visit(app, 1)
    assert store.feedback(old_warning["uuid"]) and store.card(old_plan["uuid"]), "60 days are inside the 90 kept"

    clock.now += timedelta(days=31)
    new_warning, new_plan = visit(app, 2)
    for card in (old_warning, old_plan):
        assert store.card(card["uuid"]) is None and store.feedback(card["uuid"]) == []
    assert query(store.path, "SELECT count(*) FROM issued_suggestion WHERE uuid = ?", (old_plan["suggestions"][0]["uuid"],))[0][0] == 0
    assert query(store.path, "SELECT count(*) FROM issued_suggestion WHERE card_uuid NOT IN (SELECT uuid FROM issued_card)")[0][0] == 0
    for card in (recent_warning, recent_plan, new_warning, new_plan):
        assert store.card(card["uuid"]) is not None and store.feedback(card["uuid"])[0]["card_known"] == 1
    purges = [line for line in log_output.getvalue().splitlines() if '"database-purge"' in line]
    assert len(purges) == 1 and '"feedback":2' in purges[0] and '"cards":2' in purges[0]


def item(card: str) -> list[FeedbackItem]:
    """One checked feedback item on a card."""
    return parse_feedback({"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]})


def test_the_purge_runs_on_the_first_write_of_each_hour(database):
    clock = MovableClock(CLOCK)
    store = FeedbackStore(database, clock=clock)
    store.record_feedback(PATIENT_VIEW, item("c-1"))
    query(store.path, "INSERT INTO feedback (service_id, card_uuid, outcome, outcome_timestamp, received_at, card_known)"
                      " VALUES (?, 'ancient', 'accepted', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00.000Z', 0)", (PATIENT_VIEW,))
    clock.now += timedelta(minutes=59)
    store.record_feedback(PATIENT_VIEW, item("c-2"))
    assert store.feedback("ancient"), "no second purge within the hour"
    clock.now += timedelta(minutes=2)
    store.record_feedback(PATIENT_VIEW, item("c-3"))
    assert store.feedback("ancient") == [] and len(store.feedback()) == 3


def test_retention_days_0_keeps_everything(tmp_path, database):
    app = make_app(tmp_path, database=database, retention_days=0)
    store = state_of(app).store
    clock = store.clock = MovableClock(CLOCK)
    warning, _ = visit(app)
    clock.now += timedelta(days=3650)
    visit(app, 1)
    assert store.card(warning["uuid"]) is not None and store.feedback(warning["uuid"])


def test_the_retention_setting_is_used(tmp_path, database):
    app = make_app(tmp_path, database=database, retention_days=7)
    store = state_of(app).store
    clock = store.clock = MovableClock(CLOCK)
    warning, _ = visit(app)
    clock.now += timedelta(days=6)
    visit(app, 1)
    assert store.card(warning["uuid"]) is not None
    clock.now += timedelta(days=2)
    visit(app, 2)
    assert store.card(warning["uuid"]) is None and store.feedback(warning["uuid"]) == []


@pytest.mark.parametrize("value", [-1, 1.5, "90", True])
def test_a_retention_that_is_not_a_whole_number_of_days_stops_the_service(value, tmp_path):
    with pytest.raises(ConfigError, match="retention_days"):
        Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite"), "retention_days": value})
    assert Settings.load(environ={"BACK_SPASM_CDS_RETENTION_DAYS": "30"}).retention_days == 30


def test_a_purge_that_fails_fails_no_request(app, log_output, monkeypatch):
    def broken(db, cutoff):
        db.execute("DELETE FROM issued_card")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(FeedbackStore, "_purge", staticmethod(broken))
    store = state_of(app).store
    store.clock = MovableClock(CLOCK)
    warning, plan = visit(app)
    assert store.card(warning["uuid"]) is not None, "the purge's own work was undone, the cards recorded"
    assert store.feedback(warning["uuid"]) and store.feedback(plan["uuid"])
    assert '"database-purge-failed"' in log_output.getvalue()


def test_expired_token_ids_are_deleted_at_most_once_a_minute(database):
    path = FeedbackStore(database).path
    cache = ReplayCache(path)
    t0 = int(CLOCK.timestamp())
    iss = "https://ehr.example.org"

    def kept() -> list[str]:
        return sorted(row[0] for row in query(path, "SELECT jti FROM seen_jti"))

    assert cache.first_use(iss, "expires-first", t0 + 100, t0)
    assert cache.first_use(iss, "expires-next", t0 + 180, t0 + 1)
    assert cache.first_use(iss, "a", t0 + 3000, t0 + 200)
    assert kept() == ["a", "expires-next"], "expired (60 s leeway past) and deleted"
    assert cache.first_use(iss, "b", t0 + 3000, t0 + 250)
    assert "expires-next" in kept(), "expired too, but the last purge was less than a minute ago"
    assert cache.first_use(iss, "c", t0 + 3000, t0 + 261)
    assert kept() == ["a", "b", "c"]
    assert not cache.first_use(iss, "a", t0 + 3000, t0 + 262), "a live id is still refused"


# -- file modes ---------------------------------------------------------------------------------------------------


@pytest.fixture
def open_umask():
    """The umask of a service started from a usual shell (022: new files readable by everyone)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(path: Path) -> dict[str, str]:
    """The permission bits of the database file and of its -wal and -shm files."""
    return {f"{path.name}{suffix}": oct(stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode)) for suffix in ("", "-wal", "-shm")}



def test_the_database_and_its_wal_and_shm_files_are_created_0600(tmp_path, open_umask):
    app = make_app(tmp_path)
    visit(app)
    path = Path(state_of(app).store.path)
    assert modes(path) == dict.fromkeys(modes(path), "0o600")


def test_a_database_file_recreated_while_serving_is_0600(tmp_path, open_umask):
    app = make_app(tmp_path)
    path = Path(state_of(app).store.path)
    for name in tmp_path.glob("cds.sqlite*"):
        name.unlink()
    assert in_new_thread(lambda: app.test_client().get("/readyz")).status_code == 200
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o600"


def test_files_readable_by_others_are_tightened_at_start_and_logged_once(tmp_path, open_umask):
    first = make_app(tmp_path)
    visit(first)
    path = Path(state_of(first).store.path)
    for name in modes(path):
        (tmp_path / name).chmod(0o644)
    with captured_log() as log:
        app = make_app(tmp_path)
        assert modes(path) == dict.fromkeys(modes(path), "0o600")
        visit(app)
        in_new_thread(lambda: visit(app))
    tightened = [line for line in log.getvalue().splitlines() if '"database-permissions"' in line]
    assert len(tightened) == 3 and all('"mode":"0o644"' in line for line in tightened), tightened
    assert sorted(name for name in modes(path) for line in tightened if f'{name}"' in line) == sorted(modes(path))


def test_an_sqlite_database_is_stamped_with_its_schema_version_and_a_newer_one_is_refused(tmp_path):
    from service.cds_hooks.feedback import SQLITE_SCHEMA_VERSION
    from service.errors import SchemaTooNew

    path = tmp_path / "cds.sqlite"
    FeedbackStore(path).record_feedback(PATIENT_VIEW, item("c-1"))
    assert query(path, "PRAGMA user_version") == [(SQLITE_SCHEMA_VERSION,)]
    query(path, f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew):
        FeedbackStore(path)
    assert count(path, "feedback") == 1, "the newer database is left as it was"
