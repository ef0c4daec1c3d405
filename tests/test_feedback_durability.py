"""No acknowledged write is lost and no write is refused for a lock: feedback and token ids under concurrency and crashes.

The crash test runs the real service (``back-spasm-cds serve``, gunicorn with its default workers) on a
temporary SQLite file (and on a PostgreSQL database when there is a server), posts feedback from 16 concurrent
keep-alive clients, kills the gunicorn master and every worker with SIGKILL in the middle, starts the service again on
the same database and goes on posting. Every post that was answered 200 must then be in the database, and no post may have been answered anything but 200 (a post in flight
at the kill gets no answer at all, which is allowed: the client was never told it was stored).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import service.cds_hooks.feedback
from service import state_of
from service.cds_hooks.auth import ReplayCache
from service.cds_hooks.feedback import StorageUnavailable
from tests.live_server import LiveServer
from tests.patients import Patient
from tests.service_helpers import PATIENT_VIEW, by_topic, cards_of, hook_body, make_app, outcome_diagnostics
from tests.storage_backends import BACK_ENDS, admin_query, fresh_database

ROOT = Path(__file__).resolve().parent.parent
FEEDBACK = f"/cds-services/{PATIENT_VIEW}/feedback"
WRITERS = 16


def spasm_patient() -> Patient:
    patient = Patient(45)
    patient.spasm(20)
    return patient


# -- a database held by another writer -------------------------------------------------------------------------------


@pytest.fixture
def impatient(monkeypatch):
    """Short waits for the write lock, so that a refused write is seen within a test's time."""
    monkeypatch.setattr(service.cds_hooks.feedback, "BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(service.cds_hooks.feedback, "WRITE_ATTEMPTS", 3)


def hold_write_lock(path: str) -> sqlite3.Connection:
    """Another connection that takes the write lock and keeps it until it is rolled back."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def feedback_rows(path: str | Path) -> list[tuple[str, str]]:
    """(card, outcomeTimestamp) of every stored feedback row, read straight from the SQLite file or PostgreSQL database."""
    if str(path).startswith("postgresql://"):
        return [tuple(row) for row in admin_query(str(path), "SELECT card_uuid, outcome_timestamp FROM feedback")]
    with sqlite3.connect(path) as db:
        return db.execute("SELECT card_uuid, outcome_timestamp FROM feedback").fetchall()


def test_feedback_the_database_cannot_take_is_a_503_and_nothing_is_stored(tmp_path, impatient):
    app = make_app(tmp_path)
    client = app.test_client()
    path = state_of(app).store.path
    item = {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}
    other = hold_write_lock(path)
    try:
        answer = client.post(FEEDBACK, json={"feedback": [item]})
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert int(answer.headers["Retry-After"]) > 0
        assert "send it again later" in outcome_diagnostics(answer)
        assert answer.get_json()["issue"][0]["code"] == "transient"
    finally:
        other.rollback()
        other.close()
    assert feedback_rows(path) == []
    assert client.post(FEEDBACK, json={"feedback": [item]}).status_code == 200
    assert feedback_rows(path) == [("c-1", "2026-11-25T10:01:00Z")]


def test_a_locked_database_does_not_keep_the_cards_from_the_clinician(tmp_path, impatient):
    app = make_app(tmp_path)
    other = hold_write_lock(state_of(app).store.path)
    try:
        cards = cards_of(app.test_client(), "patient-view", hook_body(app, "patient-view", spasm_patient()))
    finally:
        other.rollback()
        other.close()
    assert by_topic(cards, "phase-plan")
    assert state_of(app).store.card(cards[0]["uuid"]) is None, "the record of the cards is what was given up"


def test_a_write_takes_the_lock_soon_after_another_connection_lets_it_go(tmp_path):
    """The write looks for the lock every half millisecond or so: it goes through within a few milliseconds of the
    lock being let go, where SQLite's busy handler, looking 1, 2, 5 ... 100 ms apart, would come back about 80 ms
    late after a hold of 0.45 s."""
    import threading
    import time

    store = state_of(make_app(tmp_path)).store
    held, released = threading.Event(), []

    def hold() -> None:
        other = hold_write_lock(store.path)
        held.set()
        time.sleep(0.45)
        other.rollback()
        released.append(time.monotonic())
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    store.record_feedback(PATIENT_VIEW, service.cds_hooks.feedback.parse_feedback(
        {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}]}))
    done = time.monotonic()
    holder.join(5)
    assert [row["card_uuid"] for row in store.feedback()] == ["c-1"]
    assert done - released[0] < 0.06
    assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == service.cds_hooks.feedback.BUSY_TIMEOUT_MS


def test_a_refused_write_asks_the_client_to_come_back(tmp_path, impatient):
    store = state_of(make_app(tmp_path)).store
    other = hold_write_lock(store.path)
    try:
        with pytest.raises(StorageUnavailable) as refused:
            store.record_feedback(PATIENT_VIEW, service.cds_hooks.feedback.parse_feedback(
                {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}]}))
    finally:
        other.rollback()
        other.close()
    assert refused.value.status == 503
    assert int(refused.value.headers["Retry-After"]) > 0


def test_feedback_and_token_ids_are_synced_to_disk_when_acknowledged(tmp_path):
    """synchronous=FULL (2) is in effect for feedback and token-id commits; the card record alone may go without (1)."""
    app = make_app(tmp_path)
    store, replay = state_of(app).store, state_of(app).auth.replay
    client = app.test_client()
    level = {}
    cards_of(client, "patient-view", hook_body(app, "patient-view", spasm_patient()))
    level["cards"] = store._connection().execute("PRAGMA synchronous").fetchone()[0]
    assert client.post(FEEDBACK, json={"feedback": [
        {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:01:00Z"}]}).status_code == 200
    level["feedback"] = store._connection().execute("PRAGMA synchronous").fetchone()[0]
    assert replay.first_use("https://ehr.example.org", "jti-1", 2_000_000_000, 1_795_600_001)
    level["jti"] = replay._database.connection().execute("PRAGMA synchronous").fetchone()[0]
    assert level == {"cards": 1, "feedback": 2, "jti": 2}


# -- token ids across processes ----------------------------------------------------------------------------------------


def _use_tokens(path: str, jtis: list[str], start: Any, out: Any) -> None:
    """One process: the token ids it was the first to use, put on ``out``."""
    cache = ReplayCache(path)
    start.wait()
    out.put([jti for jti in jtis if cache.first_use("https://ehr.example.org", jti, 2_000_000_000, 1_795_600_001)])


@pytest.fixture(params=BACK_ENDS)
def database(request, tmp_path) -> Iterator[str]:
    """The database setting of each back end: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "cds.sqlite")
    else:
        with fresh_database() as url:
            yield url


def test_each_token_id_is_accepted_exactly_once_across_processes(database):
    path = database
    ReplayCache(path)
    jtis = [f"jti-{i}" for i in range(300)]
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_use_tokens, args=(path, jtis if i % 2 else jtis[::-1], start, out)) for i in range(4)]
    for worker in workers:
        worker.start()
    accepted = [jti for _ in workers for jti in out.get(timeout=60)]
    for worker in workers:
        worker.join(30)
    assert sorted(accepted) == sorted(jtis), "every token id accepted once, none twice"


# -- kill -9 in the middle of concurrent writes ---------------------------------------------------------------------------


class Writer(threading.Thread):
    """One CDS client posting feedback on a keep-alive connection until told to stop; every post it got an answer to
    is recorded with its status, those without an answer (the server died under it) are only counted."""

    def __init__(self, number: int, port: int, cards: list[str], stop: threading.Event):
        super().__init__(daemon=True)
        self.number, self.port, self.cards, self.stop = number, port, cards, stop
        self.answered: list[tuple[str, str, int, str]] = []
        self.unanswered = 0

    def run(self) -> None:
        connection, sent = None, 0
        while not self.stop.is_set():
            card = self.cards[sent % len(self.cards)]
            stamp = f"2026-11-25T10:00:00.{self.number:02d}{sent:04d}Z"
            items = [{"card": card, "outcome": "overridden", "outcomeTimestamp": stamp,
                      "overrideReason": {"userComment": "Reviewed with the patient."}}]
            sent += 1
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("POST", FEEDBACK, body=json.dumps({"feedback": items}), headers={"Content-Type": "application/json"})
                answer = connection.getresponse()
                body = answer.read().decode(errors="replace")
                self.answered.append((card, stamp, answer.status, body[:300]))
            except (OSError, http.client.HTTPException):
                self.unanswered += 1
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.05)


def issued_cards(port: int, tmp: Path) -> list[str]:
    """The uuids of the cards of one patient-view call, so that the feedback is about cards the service issued."""
    app = make_app(tmp)
    body = hook_body(app, "patient-view", spasm_patient())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", f"/cds-services/{PATIENT_VIEW}", body=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    assert answer.status == 200
    return [card["uuid"] for card in json.loads(answer.read())["cards"]]


def run_until(writers: list[Writer], seconds: float, least: int) -> None:
    """Let the writers run for ``seconds``, and longer (up to 10 s) until they have ``least`` answers in all."""
    started = time.monotonic()
    while time.monotonic() - started < seconds or (sum(len(w.answered) for w in writers) < least and time.monotonic() - started < 10):
        time.sleep(0.05)


def test_no_acknowledged_feedback_is_lost_when_the_service_is_killed_mid_write(tmp_path, database):
    server = LiveServer(tmp_path / "cds.sqlite", env={"BACK_SPASM_CDS_DATABASE": database})
    server.start()
    stop = threading.Event()
    writers: list[Writer] = []
    try:
        cards = issued_cards(server.port, tmp_path / "client")
        writers = [Writer(i, server.port, cards, stop) for i in range(WRITERS)]
        for writer in writers:
            writer.start()
        run_until(writers, 2.0, least=200)
        before_kill = sum(len(w.answered) for w in writers)
        killed = server.kill()
        assert len(killed) >= 2, "the master and at least one worker"
        server.start()
        answered_at_restart = sum(len(w.answered) for w in writers)
        run_until(writers, 1.5, least=answered_at_restart + 100)
    finally:
        stop.set()
        for writer in writers:
            writer.join(15)
        server.stop()
    answered = [a for w in writers for a in w.answered]
    refused = [(status, body) for _, _, status, body in answered if status != 200]
    assert refused == [], f"{len(refused)} posts answered other than 200, e.g. {refused[:3]}"
    acknowledged = {(card, stamp) for card, stamp, _, _ in answered}
    stored = set(feedback_rows(database))
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged posts are not in the database"
    assert before_kill >= 100 and len(answered) - answered_at_restart >= 50, "posts were acknowledged before the kill and after the restart"
    print(f"\nfeedback posts acknowledged {len(acknowledged)} (before the kill {before_kill}), found {len(acknowledged & stored)}; "
          f"stored in all {len(stored)}; unanswered {sum(w.unanswered for w in writers)}; killed pids {len(killed)}")
