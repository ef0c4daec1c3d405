"""Each gunicorn worker warms up after it forks (service.cds_hooks.hooks.warm_up): a made-up call of every service
through parsing, checks, prefetch, $apply and cards. It must leave nothing behind: no issued card on record, no
change to what a real request is answered."""

from __future__ import annotations

import sqlite3

import pytest

from protocol.engine.requirements import data_requirements
from service import state_of
from service.cds_hooks.hooks import _made_up_record, warm_up
from tests.patients import CYCLOBENZAPRINE_10, PHENELZINE, Patient
from tests.service_helpers import cards_of, hook_body, make_app, without_uuids


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
