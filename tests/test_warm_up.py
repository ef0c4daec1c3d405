"""Each gunicorn worker warms up after it forks (service.cds_hooks.hooks.warm_up): a made-up call of every service
through parsing, checks, prefetch, $apply and cards. It must leave nothing behind: no issued card on record, no
change to what a real request is answered. After the warm-up each worker prepares its storage
(service.cds_hooks.hooks.prepare_storage): its connection opened and its first purges run before its first request."""

from __future__ import annotations

import sqlite3

import pytest

from protocol.engine.requirements import data_requirements
from service import state_of
from service.cds_hooks.hooks import _made_up_record, prepare_storage, warm_up
from tests.patients import CYCLOBENZAPRINE_10, PHENELZINE, Patient
from tests.service_helpers import cards_of, hook_body, make_app, without_uuids
from tests.storage_backends import BACK_ENDS, fresh_database


def _patient() -> Patient:
    p = Patient(45)
    p.spasm(20)
    p.pain(7)
    p.medication(PHENELZINE, kind="statement")
    return p


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_a_warmed_up_application_answers_as_a_cold_one_and_records_nothing_of_the_warm_up(tmp_path, hook):
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    cold, warm = make_app(tmp_path / "cold", database=str(tmp_path / "cold" / "cds.sqlite")), \
        make_app(tmp_path / "warm", database=str(tmp_path / "warm" / "cds.sqlite"))
    warm_up(warm)
    warm_up(warm)  # as in the master, then in a worker
    with sqlite3.connect(state_of(warm).store.path) as db:
        assert db.execute("SELECT count(*) FROM issued_card").fetchone() == (0,)
    p = _patient()
    drafts = [p.draft_medication(CYCLOBENZAPRINE_10, draft_id="cbz-1")] if hook != "patient-view" else []
    body = hook_body(cold, hook, p, drafts)
    assert without_uuids(cards_of(warm.test_client(), hook, body)) == without_uuids(cards_of(cold.test_client(), hook, body))


def test_the_made_up_record_follows_the_data_requirements(tmp_path):
    """One resource per code filter, of the patient warm-up, coded from the filter's ValueSet: the retrieves find them."""
    state = state_of(make_app(tmp_path))
    service = next(s for s in state.services.values() if s.hook == "patient-view")
    resources = _made_up_record(state.engine, service.plan, "2026-11-25T10:00:00+00:00")
    assert resources and all(r["subject"] == {"reference": "Patient/warm-up"} for r in resources)
    record = state.engine.record(resources + [{"resourceType": "Patient", "id": "warm-up"}], state.clock(), "warm-up")
    coded = [r for r in data_requirements(state.engine.content, service.plan.resource) if r.get("codeFilter")]
    assert coded and all(record.retrieve(requirement) for requirement in coded)


@pytest.mark.parametrize("back_end", BACK_ENDS)
def test_a_prepared_worker_has_purged_and_its_first_request_purges_nothing(tmp_path, back_end, monkeypatch):
    """prepare_storage deletes the expired token ids and the cards past their retention; the first request's writes
    then carry no purge of their own (its purges were what made a worker's first request slower than the next)."""
    from contextlib import nullcontext

    from service.cds_hooks.cards import IssuedCard

    with (nullcontext(str(tmp_path / "cds.sqlite")) if back_end == "sqlite" else fresh_database()) as database:
        app = make_app(tmp_path, database=database)
        state = state_of(app)
        state.store._last_purge = state.auth.replay._last_purge = None  # as in a worker just forked from a fresh master
        now = state.clock()
        long_ago = type(state.store)(state.store.path, clock=lambda: now.replace(year=now.year - 1))
        long_ago.record_cards("svc", "patient-view", "hi-old", [IssuedCard("old-card", "act", "topic", "info", [])])
        state.auth.replay._database.write(lambda db: db.execute("INSERT INTO seen_jti (iss, jti, exp) VALUES (?, ?, ?)",
                                                                ("iss", "expired", int(now.timestamp()) - 3600)), "test")
        prepare_storage(app)
        assert state.store.card("old-card") is None
        assert state.auth.replay._database.read(lambda db: db.execute("SELECT count(*) FROM seen_jti").fetchone()[0]) == 0
        purges = []
        monkeypatch.setattr(type(state.store), "_purge", lambda db, cutoff: purges.append(cutoff) or {})
        cards_of(app.test_client(), "patient-view", hook_body(app, "patient-view", _patient()))
        assert state.auth.replay.first_use("iss", "jti-1", int(now.timestamp()) + 60, now.timestamp())
        assert purges == [] and state.auth.replay._purge_due(now.timestamp()) is False
