"""Feedback of the wrong shape is a 400 naming the field, never a server error, and nothing of it is stored.

The bodies are CDS Hooks 2.0 feedback on cards the service really issued (a plan card with a suggestion, a
warning with override reasons), with one field given a JSON type or a length the service does not store.
Every stored column is read back from the database (SQLite, and PostgreSQL when there is a server): it holds text
(or nothing), never another type; the clinician's comment is kept only as its length.
"""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import state_of
from service.cds_hooks.feedback import MAX_ITEMS, MAX_LENGTH, MAX_STORED_CHARACTERS, MAX_SUGGESTIONS
from tests.patients import SERTRALINE, Patient
from tests.service_helpers import PATIENT_VIEW, by_topic, cards_of, hook_body, make_app, outcome_diagnostics
from tests.storage_backends import BACK_ENDS, admin_rows, fresh_database

FEEDBACK = f"/cds-services/{PATIENT_VIEW}/feedback"
COLUMNS = ("service_id", "card_uuid", "outcome", "accepted_suggestions", "override_system", "override_code", "override_display",
           "outcome_timestamp", "received_at")

pytestmark = pytest.mark.usefixtures("quiet_service_log")


@pytest.fixture(scope="module", params=BACK_ENDS)
def app(request, tmp_path_factory):
    """The service on each back end: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield make_app(tmp_path_factory.mktemp("feedback-input"))
        return
    with fresh_database() as url:
        yield make_app(tmp_path_factory.mktemp("feedback-input"), database=url)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()



@pytest.fixture(scope="module")
def cards(app, client):
    """The plan card (with its CarePlan suggestion) and the cyclobenzaprine warning (with override reasons) of a patient
    with a back spasm on sertraline."""
    patient = Patient(56)
    patient.spasm(20)
    patient.medication(SERTRALINE)
    issued = cards_of(client, "patient-view", hook_body(app, "patient-view", patient))
    warning = by_topic(issued, "cyclobenzaprine")
    assert warning["indicator"] == "warning" and warning["overrideReasons"]
    return {"plan": by_topic(issued, "phase-plan"), "warning": warning}


def accepted(cards) -> dict:
    """The clinician accepted the plan card's suggestion."""
    plan = cards["plan"]
    return {"card": plan["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": plan["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-11-25T10:01:12.345Z"}


def overridden(cards) -> dict:
    """The clinician overrode the warning, with one of its override reasons and a comment."""
    reason = cards["warning"]["overrideReasons"][0]
    return {"card": cards["warning"]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:02:00+11:00",
            "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"], "display": reason["display"]},
                               "userComment": "Discussed with the patient; reviewed in a week."}}


def rows(app) -> list[dict]:
    """Every feedback row as the database holds it, with the type of each column's value ("null" for none)."""
    store = state_of(app).store
    if store.kind == "postgresql":
        types = ", ".join(f"CASE WHEN {c} IS NULL THEN 'null' ELSE pg_typeof({c})::text END AS {c}_type" for c in (*COLUMNS, "comment_length"))
        return admin_rows(store.path, f"SELECT *, {types} FROM feedback ORDER BY id")
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        types = ", ".join(f"typeof({c}) AS {c}_type" for c in (*COLUMNS, "comment_length"))
        return [dict(r) for r in db.execute(f"SELECT *, {types} FROM feedback ORDER BY id")]


def post(client, items: list[dict]):
    return client.post(FEEDBACK, json={"feedback": items})


def replaced(item: dict, path: str, value) -> dict:
    """A copy of a feedback item with the field at a dotted path set to value (missing objects created)."""
    item = copy.deepcopy(item)
    *parents, last = path.split(".")
    node = item
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value
    return item


def test_well_formed_feedback_is_stored_with_every_field_as_text_and_the_comment_as_its_length(app, client, cards):
    before = len(rows(app))
    answer = post(client, [accepted(cards), overridden(cards)])
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json() == {"received": 2, "stored": 2}
    plan_row, warning_row = rows(app)[before:]
    assert json.loads(plan_row["accepted_suggestions"]) == [cards["plan"]["suggestions"][0]["uuid"]]
    reason = cards["warning"]["overrideReasons"][0]
    assert (warning_row["override_system"], warning_row["override_code"], warning_row["override_display"]) == \
        (reason["system"], reason["code"], reason["display"])
    assert "user_comment" not in warning_row
    assert (plan_row["comment_length"], warning_row["comment_length"]) == (None, len("Discussed with the patient; reviewed in a week."))
    assert plan_row["card_known"] == warning_row["card_known"] == 1
    for row in (plan_row, warning_row):
        assert all(row[f"{c}_type"] in ("text", "null") for c in COLUMNS), row


WRONG_TYPES = {
    "card": [{"uuid": "x"}, ["x"], 42, 4.2, True, ""],
    "outcome": [{"code": "accepted"}, ["accepted"], 1, "ACCEPTED"],
    "outcomeTimestamp": [["2026-11-25T10:01:00Z"], {"at": "2026-11-25T10:01:00Z"}, 1795600000, "2026-11-25", "now"],
    "acceptedSuggestions": [{"id": "x"}, "x", [{"id": 5}], [{"id": {"uuid": "x"}}], [["x"]], [{"id": ""}], []],
    "overrideReason": [[], "no", 5, True],
    "overrideReason.reason": ["too-busy", [{"code": "x"}], {"system": "http://example.org"}, {"code": 5}, {"code": {"c": "x"}}],
    "overrideReason.reason.system": [{"url": "http://example.org"}, ["http://example.org"], 5, False],
    "overrideReason.reason.display": [{"text": "Too busy"}, ["Too busy"], 5.5],
    "overrideReason.userComment": [{"text": "why"}, ["why"], 3],
}
TOO_LONG = {
    "card": "c" * (MAX_LENGTH["card"] + 1),
    "outcomeTimestamp": "2026-11-25T10:01:00" + "0" * MAX_LENGTH["outcomeTimestamp"] + "Z",
    "overrideReason.reason.system": "http://example.org/" + "s" * MAX_LENGTH["system"],
    "overrideReason.reason.code": "x" * (MAX_LENGTH["code"] + 1),
    "overrideReason.reason.display": "d" * (MAX_LENGTH["display"] + 1),
    "overrideReason.userComment": "u" * (MAX_LENGTH["userComment"] + 1),
    "acceptedSuggestions": [{"id": "s" * (MAX_LENGTH["suggestion id"] + 1)}],
}
CASES = [(path, value) for path, values in WRONG_TYPES.items() for value in values] + list(TOO_LONG.items())


@pytest.mark.parametrize("path, value", CASES, ids=[f"{p}={json.dumps(v)[:40]}" for p, v in CASES])
def test_a_field_of_the_wrong_type_or_length_is_a_400_naming_it_and_nothing_is_stored(app, client, cards, path, value):
    base = accepted(cards) if path == "acceptedSuggestions" else overridden(cards)
    before = len(rows(app))
    answer = post(client, [replaced(base, path, value)])
    assert answer.status_code == 400, (answer.status_code, answer.get_data(as_text=True)[:500])
    assert f"feedback[0].{path}" in outcome_diagnostics(answer)
    assert len(rows(app)) == before


def test_every_bad_item_of_a_batch_is_named_and_the_batch_is_not_stored(app, client, cards):
    before = len(rows(app))
    items = [accepted(cards), replaced(overridden(cards), "overrideReason.reason.system", {"a": 1}),
             replaced(accepted(cards), "card", ["x"])]
    text = outcome_diagnostics(post(client, items))
    assert "feedback[1].overrideReason.reason.system" in text and "feedback[2].card" in text and "feedback[0]" not in text
    assert len(rows(app)) == before


def test_too_many_items_or_suggestions_are_refused(app, client, cards):
    before = len(rows(app))
    many = [dict(overridden(cards), outcomeTimestamp=f"2026-11-25T10:{i // 60:02d}:{i % 60:02d}Z") for i in range(MAX_ITEMS + 1)]
    answer = post(client, many)
    assert answer.status_code == 400 and "feedback" in outcome_diagnostics(answer)
    suggestions = [{"id": f"s-{i}"} for i in range(MAX_SUGGESTIONS + 1)]
    answer = post(client, [dict(accepted(cards), acceptedSuggestions=suggestions)])
    assert answer.status_code == 400 and "feedback[0].acceptedSuggestions" in outcome_diagnostics(answer)
    assert len(rows(app)) == before


def test_a_request_that_would_add_more_than_the_cap_to_the_table_is_refused(app, client, cards):
    """Items and suggestion ids each within their limits, but together more than one request may store."""
    def item(i: int, suggestions: int) -> dict:
        """On a card not on record, whose suggestions cannot be checked: only the size limits decide."""
        return dict(accepted(cards), card=f"{i:08d}-0000-4000-8000-000000000000",
                    outcomeTimestamp=f"2026-11-25T11:{i // 60:02d}:{i % 60:02d}Z",
                    acceptedSuggestions=[{"id": f"{i:04d}-{n:03d}-" + "s" * 27} for n in range(suggestions)])

    before = len(rows(app))
    answer = post(client, [item(i, MAX_SUGGESTIONS) for i in range(MAX_ITEMS)])
    assert answer.status_code == 400 and f"at most {MAX_STORED_CHARACTERS}" in outcome_diagnostics(answer)
    assert len(rows(app)) == before
    answer = post(client, [item(i, MAX_SUGGESTIONS) for i in range(10)])
    assert answer.status_code == 200 and answer.get_json()["stored"] == 10
    stored = sum(len(r["card_uuid"] + r["outcome"] + r["outcome_timestamp"] + r["accepted_suggestions"]) for r in rows(app)[before:])
    assert MAX_STORED_CHARACTERS // 2 < stored <= MAX_STORED_CHARACTERS


def test_optional_fields_given_as_null_are_left_out(app, client, cards):
    item = overridden(cards)
    item["outcomeTimestamp"] = "2026-11-25T10:03:00Z"
    item["overrideReason"] = {"reason": {"code": item["overrideReason"]["reason"]["code"], "system": None, "display": None},
                              "userComment": None}
    item["acceptedSuggestions"] = None
    answer = post(client, [item])
    assert answer.status_code == 200, answer.get_data(as_text=True)
    row = rows(app)[-1]
    assert (row["override_system"], row["override_display"], row["comment_length"], row["accepted_suggestions"]) == (None,) * 4


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10)
PATHS = ["card", "outcome", "outcomeTimestamp", "acceptedSuggestions", "overrideReason", "overrideReason.reason",
         "overrideReason.reason.system", "overrideReason.reason.code", "overrideReason.reason.display", "overrideReason.userComment"]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JSON, outcome=st.sampled_from(["accepted", "overridden"]))
def test_any_json_in_any_field_is_a_400_or_stored_as_text(app, client, cards, path, value, outcome):
    item = replaced(accepted(cards) if outcome == "accepted" else overridden(cards), path, value)
    before = len(rows(app))
    answer = post(client, [item])
    assert answer.status_code in (200, 400), (answer.status_code, answer.get_data(as_text=True)[:500])
    if answer.status_code == 400:
        assert "feedback[0]" in outcome_diagnostics(answer)
        assert len(rows(app)) == before
    else:
        for row in rows(app)[before:]:
            assert all(row[f"{c}_type"] in ("text", "null") for c in COLUMNS), row
            assert row["comment_length_type"] in ("integer", "null"), row
