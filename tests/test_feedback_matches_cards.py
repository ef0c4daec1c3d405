"""Feedback is checked against what was issued: the suggestions it accepts must be the card's own, and the reason it
overrides with one of the card's override reasons; feedback on a card not on record is kept as it comes."""

from __future__ import annotations

import uuid

import pytest

from tests.patients import CYCLOBENZAPRINE_10, PHENELZINE, Patient
from tests.service_helpers import ORDER_SIGN, by_topic, cards_of, hook_body, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("feedback-matches"))


@pytest.fixture(scope="module")
def card(app):
    """The critical MAO-inhibitor card of an order-sign call: a suggestion and override reasons."""
    p = Patient(45)
    p.spasm(20)
    p.medication(PHENELZINE, kind="statement")
    cards = cards_of(app.test_client(), "order-sign", hook_body(app, "order-sign", p, [p.draft_medication(CYCLOBENZAPRINE_10)]))
    found = by_topic(cards, "S1")
    assert found["suggestions"] and found["overrideReasons"]
    return found


def post(app, *items):
    return app.test_client().post(f"/cds-services/{ORDER_SIGN}/feedback", json={"feedback": list(items)})


def stamp() -> str:
    return f"2026-11-25T10:{uuid.uuid4().int % 60:02d}:{uuid.uuid4().int % 60:02d}.{uuid.uuid4().int % 1000:03d}Z"


def test_accepting_the_cards_own_suggestion_is_stored(app, card):
    answer = post(app, {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": stamp(),
                        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]})
    assert answer.status_code == 200 and answer.json["stored"] == 1


def test_a_suggestion_of_no_such_card_is_400_naming_it(app, card):
    stranger = str(uuid.uuid4())
    answer = post(app, {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": stamp(), "acceptedSuggestions": [{"id": stranger}]})
    assert answer.status_code == 400
    assert any(stranger in issue["diagnostics"] and "feedback[0].acceptedSuggestions" in issue["diagnostics"]
               for issue in answer.json["issue"])


def test_overriding_with_one_of_the_cards_reasons_is_stored_with_or_without_its_system(app, card):
    reason = card["overrideReasons"][0]
    for coding in (reason, {"code": reason["code"]}):
        answer = post(app, {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp(), "overrideReason": {"reason": coding}})
        assert answer.status_code == 200, answer.json


def test_a_reason_the_card_did_not_offer_is_400_naming_it(app, card):
    answer = post(app, {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp(),
                        "overrideReason": {"reason": {"system": "http://example.org/other", "code": "because"}}})
    assert answer.status_code == 400
    assert any("feedback[0].overrideReason.reason" in issue["diagnostics"] and "because" in issue["diagnostics"] for issue in answer.json["issue"])


def test_feedback_on_a_card_not_on_record_is_kept_as_it_comes(app):
    answer = post(app, {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": stamp(),
                        "acceptedSuggestions": [{"id": str(uuid.uuid4())}]})
    assert answer.status_code == 200 and answer.json["stored"] == 1
