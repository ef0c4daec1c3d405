"""One hook call is one pass: the drafts are taken out of the request once, the record is indexed once for every
$apply call of the request, and the compiled plan is handed on rather than looked up again by its id; the cards are
those of applying the plan to each draft on its own."""

from __future__ import annotations

import pytest

import service.cds_hooks.calls
from protocol.engine.apply import Engine
from protocol.engine.record import Record
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, PHENELZINE, TENS_DEVICE, Patient
from tests.service_helpers import ORDER_SIGN, cards_of, hook_body, make_app, shared_engine, topics


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("one-pass"))


def _patient_with_drafts() -> tuple[Patient, list[dict]]:
    """A patient on an MAOI with three draft orders: two cyclobenzaprine (a duplicate) and a TENS device."""
    p = Patient(45)
    p.spasm(20)
    p.pain(7)
    p.medication(PHENELZINE, kind="statement")
    drafts = [p.draft_medication(CYCLOBENZAPRINE_10, draft_id="cbz-1"), p.draft_medication(CYCLOBENZAPRINE_10, draft_id="cbz-2", days=30),
              p.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-1")]
    return p, drafts


class Counting:
    """Counts the calls of a function or method it replaces, passing them on."""

    def __init__(self, original):
        self.original = original
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


def test_an_order_sign_request_with_three_drafts_is_read_and_indexed_once(app, monkeypatch):
    p, drafts = _patient_with_drafts()
    body = hook_body(app, "order-sign", p, drafts)
    records, extractions, lookups = Counting(Record.__init__), Counting(service.cds_hooks.calls.bundle_resources), Counting(Engine.plan)
    applied: list[Record] = []
    original_apply = Engine.apply

    def apply(self, *args, **kwargs):
        applied.append(kwargs.get("record"))
        return original_apply(self, *args, **kwargs)

    monkeypatch.setattr(Record, "__init__", lambda self, *a, **k: records(self, *a, **k))
    monkeypatch.setattr(service.cds_hooks.calls, "bundle_resources", extractions)
    monkeypatch.setattr(Engine, "plan", lambda self, *a, **k: lookups(self, *a, **k))
    monkeypatch.setattr(Engine, "apply", apply)
    cards = cards_of(app.test_client(), "order-sign", body)
    assert len(applied) == 3, "one $apply call per draft order"
    assert records.calls == 1 and applied[0] is not None and all(r is applied[0] for r in applied)
    assert extractions.calls == 1, "the draft orders are taken out of the request once"
    assert lookups.calls == 0, "the compiled plan is passed on, not looked up by its id"
    assert {"S1", "tens"} <= set(topics(cards)), "the MAOI rule on the cyclobenzaprine drafts, the TENS card on the device"


def test_the_shared_record_gives_the_cards_of_separate_calls(app):
    """Each draft applied on its own, with a record of its own built from the request's data and its parameters,
    gives the same actions as the calls of the request sharing one record."""
    p, drafts = _patient_with_drafts()
    body = hook_body(app, "order-sign", p, drafts)
    engine = shared_engine()
    calls = service.cds_hooks.calls.calls_for_hook(engine, body, plan=app.extensions["back_spasm_cds"].services[ORDER_SIGN].plan)
    shared = service.cds_hooks.calls.run_calls(engine, calls, CLOCK)
    separate = [engine.apply(c.plan, c.data, CLOCK, c.subject, practitioner=c.practitioner, parameters=c.parameters) for c in calls]

    def action_ids(result):
        return [a.fields.get("id") for a in result.actions]

    assert [action_ids(r) for r in shared] == [action_ids(r) for r in separate]
    assert [len(r.issues) for r in shared] == [len(r.issues) for r in separate]
